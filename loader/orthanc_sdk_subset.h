/*
 * The few facts of Orthanc's plugin SDK (OrthancCPlugin.h) that the loader uses.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The loader starts Python and carries the REST routes' calls into it; every
 * other SDK call is made from Python through the context's InvokeService.
 * So building it needs no SDK header:
 * these declarations keep the SDK's own names, layouts and numbers (SDK
 * 1.10.1), and tests/test_sdk_bindings.py compiles one probe against this file
 * and against the real header and compares what each prints.
 */

#ifndef ORTHANC_PY_SDK_SUBSET_H
#define ORTHANC_PY_SDK_SUBSET_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__) && __GNUC__ >= 4
#define ORTHANC_PLUGINS_API __attribute__((visibility("default")))
#else
#define ORTHANC_PLUGINS_API
#endif

/* The SDK version these declarations (and orthanc_py's generated bindings)
 * come from: the oldest Orthanc the loader accepts by default. */
#define ORTHANC_PLUGINS_MINIMAL_MAJOR_NUMBER 1
#define ORTHANC_PLUGINS_MINIMAL_MINOR_NUMBER 10
#define ORTHANC_PLUGINS_MINIMAL_REVISION_NUMBER 1

/* Orthanc passes every enumeration as a 32-bit integer; the largest
 * enumerator keeps the compiler from choosing another size. */
typedef enum
{
  OrthancPluginErrorCode_Success = 0,
  OrthancPluginErrorCode_Plugin = 1,
  OrthancPluginErrorCode_NetworkProtocol = 9,
  _OrthancPluginErrorCode_INTERNAL = 0x7fffffff
} OrthancPluginErrorCode;

typedef enum
{
  _OrthancPluginService_LogInfo = 1,
  _OrthancPluginService_LogWarning = 2,
  _OrthancPluginService_LogError = 3,
  _OrthancPluginService_GetErrorDescription = 17,
  _OrthancPluginService_RegisterOnChangeCallback = 1003,
  _OrthancPluginService_RegisterRestCallbackNoLock = 1004,
  _OrthancPluginService_AnswerBuffer = 2000,
  _OrthancPluginService_INTERNAL = 0x7fffffff
} _OrthancPluginService;

_Static_assert(sizeof(OrthancPluginErrorCode) == sizeof(int32_t), "Orthanc's enumerations are 32-bit");
_Static_assert(sizeof(_OrthancPluginService) == sizeof(int32_t), "Orthanc's enumerations are 32-bit");

typedef void (*OrthancPluginFree)(void *buffer);

/* What Orthanc hands to OrthancPluginInitialize. The field order is the
 * SDK's: InvokeService is the one entry point to every service. */
typedef struct _OrthancPluginContext_t
{
  void *pluginsManager;
  const char *orthancVersion;
  OrthancPluginFree Free;
  OrthancPluginErrorCode (*InvokeService)(struct _OrthancPluginContext_t *context,
                                          _OrthancPluginService service,
                                          const void *params);
} OrthancPluginContext;

/* The log services take the message itself as their parameter. */
static inline void OrthancPluginLogError(OrthancPluginContext *context, const char *message)
{
  context->InvokeService(context, _OrthancPluginService_LogError, message);
}

static inline void OrthancPluginLogWarning(OrthancPluginContext *context, const char *message)
{
  context->InvokeService(context, _OrthancPluginService_LogWarning, message);
}

static inline void OrthancPluginLogInfo(OrthancPluginContext *context, const char *message)
{
  context->InvokeService(context, _OrthancPluginService_LogInfo, message);
}

/* The REST route: the loader registers the C functions Orthanc calls for the
 * routes of Python scripts, and sends their answers. Orthanc's objects are
 * only handled through pointers here, hence the incomplete types. */
typedef struct _OrthancPluginRestOutput_t OrthancPluginRestOutput;
typedef struct _OrthancPluginHttpRequest_t OrthancPluginHttpRequest;

typedef OrthancPluginErrorCode (*OrthancPluginRestCallback)(OrthancPluginRestOutput *output,
                                                            const char *url,
                                                            const OrthancPluginHttpRequest *request);

/* Changes: the loader receives them and passes on those Python wants. The
 * two enums are 32 bits wide, as in the SDK; their values are Python's business. */
typedef enum
{
  _OrthancPluginChangeType_INTERNAL = 0x7fffffff
} OrthancPluginChangeType;

typedef enum
{
  _OrthancPluginResourceType_INTERNAL = 0x7fffffff
} OrthancPluginResourceType;

typedef OrthancPluginErrorCode (*OrthancPluginOnChangeCallback)(OrthancPluginChangeType changeType,
                                                                OrthancPluginResourceType resourceType,
                                                                const char *resourceId);

typedef struct
{
  OrthancPluginOnChangeCallback callback;
} _OrthancPluginOnChangeCallback;

/* Returns what InvokeService returns (the SDK's version returns nothing). */
static inline OrthancPluginErrorCode OrthancPluginRegisterOnChangeCallback(OrthancPluginContext *context,
                                                                           OrthancPluginOnChangeCallback callback)
{
  _OrthancPluginOnChangeCallback params = {callback};
  return context->InvokeService(context, _OrthancPluginService_RegisterOnChangeCallback, &params);
}

typedef struct
{
  const char *pathRegularExpression;
  OrthancPluginRestCallback callback;
} _OrthancPluginRestCallback;

static inline void OrthancPluginRegisterRestCallbackNoLock(OrthancPluginContext *context,
                                                           const char *pathRegularExpression,
                                                           OrthancPluginRestCallback callback)
{
  _OrthancPluginRestCallback params = {pathRegularExpression, callback};
  context->InvokeService(context, _OrthancPluginService_RegisterRestCallbackNoLock, &params);
}

typedef struct
{
  OrthancPluginRestOutput *output;
  const void *answer;
  uint32_t answerSize;
  const char *mimeType;
} _OrthancPluginAnswerBuffer;

typedef struct
{
  const char **target;
  OrthancPluginErrorCode error;
} _OrthancPluginGetErrorDescription;

/* Orthanc's text for an error code (a static string), or "Unknown error code". */
static inline const char *OrthancPluginGetErrorDescription(OrthancPluginContext *context,
                                                           OrthancPluginErrorCode error)
{
  const char *description = NULL;
  _OrthancPluginGetErrorDescription params = {&description, error};
  if (context->InvokeService(context, _OrthancPluginService_GetErrorDescription, &params) !=
          OrthancPluginErrorCode_Success || description == NULL)
    return "Unknown error code";
  return description;
}

/* 1 when the running Orthanc is at least major.minor.revision, else 0.
 * Orthanc reports its version as "X.Y.Z", or "mainline" for a development
 * build, which the SDK treats as newer than any release. */
static inline int OrthancPluginCheckVersionAdvanced(OrthancPluginContext *context,
                                                    int expectedMajor,
                                                    int expectedMinor,
                                                    int expectedRevision)
{
  int running[3];
  const int expected[3] = {expectedMajor, expectedMinor, expectedRevision};
  if (strcmp(context->orthancVersion, "mainline") == 0)
    return 1;
  if (sscanf(context->orthancVersion, "%4d.%4d.%4d", &running[0], &running[1], &running[2]) != 3)
    return 0;
  for (int i = 0; i < 3; i++)
  {
    if (running[i] != expected[i])
      return running[i] > expected[i];
  }
  return 1;
}

#endif
