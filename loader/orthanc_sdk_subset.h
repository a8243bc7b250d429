/*
 * The few facts of Orthanc's plugin SDK (OrthancCPlugin.h) that the loader uses.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The loader only starts Python; every other SDK call is made from Python
 * through the context's InvokeService. So building it needs no SDK header:
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
  _OrthancPluginErrorCode_INTERNAL = 0x7fffffff
} OrthancPluginErrorCode;

typedef enum
{
  _OrthancPluginService_LogInfo = 1,
  _OrthancPluginService_LogWarning = 2,
  _OrthancPluginService_LogError = 3,
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
