/*
 * orthanc_py loader: the Orthanc plugin that starts CPython inside Orthanc.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * This file only starts and stops the interpreter. Everything else (reading
 * the configuration, running the user's script, every SDK call) lives in the
 * Python package, reached through orthanc_py._runtime.start()/stop().
 *
 * The interpreter is the virtual environment the loader is installed in: the
 * loader finds its own file (dladdr), walks up to the folder that holds
 * pyvenv.cfg and makes that venv's bin/python the program name, which is how
 * CPython itself decides sys.prefix and sys.executable.
 */

#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <pthread.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orthanc_sdk_subset.h"

#ifndef ORTHANC_PY_VERSION
#define ORTHANC_PY_VERSION "0.0.0"
#endif

/* The oldest Orthanc accepted; the build may raise it (tests build a loader
 * with an impossible minimum to see the refusal). */
#ifndef ORTHANC_PY_MIN_MAJOR
#define ORTHANC_PY_MIN_MAJOR ORTHANC_PLUGINS_MINIMAL_MAJOR_NUMBER
#define ORTHANC_PY_MIN_MINOR ORTHANC_PLUGINS_MINIMAL_MINOR_NUMBER
#define ORTHANC_PY_MIN_REVISION ORTHANC_PLUGINS_MINIMAL_REVISION_NUMBER
#endif

#define STR_(x) #x
#define STR(x) STR_(x)

/* Read by `orthanc-py doctor` to tell which Python this loader was built for. */
ORTHANC_PLUGINS_API const char orthanc_py_loader_python[] =
    STR(PY_MAJOR_VERSION) "." STR(PY_MINOR_VERSION);
/* ...and which Orthanc it needs at least. */
ORTHANC_PLUGINS_API const char orthanc_py_loader_min_orthanc[] =
    STR(ORTHANC_PY_MIN_MAJOR) "." STR(ORTHANC_PY_MIN_MINOR) "." STR(ORTHANC_PY_MIN_REVISION);

static OrthancPluginContext *context = NULL;
/* Whether start() ran in this cycle of Orthanc (Initialize ... Finalize). */
static int running = 0;

static void log_error(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void log_error(const char *format, ...)
{
  char message[2 * PATH_MAX + 512];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof(message), format, args);
  va_end(args);
  if (context != NULL)
    OrthancPluginLogError(context, message);
  else
    fprintf(stderr, "%s\n", message);
}

/* The absolute path of the shared object that holds `symbol`. */
static int path_of_symbol(const void *symbol, char *out, size_t size)
{
  Dl_info info;
  if (dladdr(symbol, &info) == 0 || info.dli_fname == NULL)
    return -1;
  if (realpath(info.dli_fname, out) == NULL)
  {
    snprintf(out, size, "%s", info.dli_fname);
  }
  return 0;
}

/* Walks up from the loader's folder to the first folder holding pyvenv.cfg. */
static int find_venv(const char *loader_path, char *venv, size_t size)
{
  char folder[PATH_MAX];
  snprintf(folder, sizeof(folder), "%s", loader_path);
  for (;;)
  {
    char *slash = strrchr(folder, '/');
    if (slash == NULL || slash == folder)
      return -1;
    *slash = '\0';
    char cfg[PATH_MAX + 16];
    snprintf(cfg, sizeof(cfg), "%s/pyvenv.cfg", folder);
    if (access(cfg, R_OK) == 0)
    {
      snprintf(venv, size, "%s", folder);
      return 0;
    }
  }
}

/* The "major.minor" of the Python a venv was made with, from its pyvenv.cfg
 * ("version = 3.11.7", or "version_info = 3.11.7.final.0" in newer venvs). */
static int venv_python_version(const char *venv, char *out, size_t size)
{
  char cfg_path[PATH_MAX + 16];
  snprintf(cfg_path, sizeof(cfg_path), "%s/pyvenv.cfg", venv);
  FILE *cfg = fopen(cfg_path, "r");
  if (cfg == NULL)
    return -1;
  char line[1024];
  int found = -1;
  while (found != 0 && fgets(line, sizeof(line), cfg) != NULL)
  {
    char key[64];
    int major, minor;
    if (sscanf(line, " %63[a-z_] = %d.%d", key, &major, &minor) == 3 &&
        (strcmp(key, "version") == 0 || strcmp(key, "version_info") == 0))
    {
      snprintf(out, size, "%d.%d", major, minor);
      found = 0;
    }
  }
  fclose(cfg);
  return found;
}

/* Orthanc opens plugins without RTLD_GLOBAL, so the Py* symbols of libpython
 * would stay invisible to C extensions (numpy, Pillow...) that the script
 * imports later. Re-opening libpython with RTLD_GLOBAL publishes them. */
static int publish_libpython(void)
{
  char libpython[PATH_MAX];
  if (path_of_symbol((const void *)&Py_InitializeFromConfig, libpython, sizeof(libpython)) != 0)
  {
    log_error("orthanc_py: cannot locate libpython in this process");
    return -1;
  }
  if (dlopen(libpython, RTLD_NOW | RTLD_GLOBAL) == NULL)
  {
    log_error("orthanc_py: cannot re-open %s with RTLD_GLOBAL: %s", libpython, dlerror());
    return -1;
  }
  return 0;
}

static int start_interpreter(const char *program)
{
  /* The process's locale is Orthanc's: Python must not call setlocale()
   * (nor coerce a C locale through LC_CTYPE in the environment). UTF-8 mode
   * gives Python its encodings without it. */
  PyPreConfig preconfig;
  PyPreConfig_InitPythonConfig(&preconfig);
  preconfig.configure_locale = 0;
  preconfig.coerce_c_locale = 0;
  preconfig.coerce_c_locale_warn = 0;
  preconfig.utf8_mode = 1;
  preconfig.parse_argv = 0;
  PyStatus prestatus = Py_PreInitialize(&preconfig);
  if (PyStatus_Exception(prestatus))
  {
    log_error("orthanc_py: Python failed to pre-initialize: %s",
              prestatus.err_msg ? prestatus.err_msg : "unknown error");
    return -1;
  }
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  /* Orthanc owns SIGINT/SIGTERM: Python must not replace its handlers. */
  config.install_signal_handlers = 0;
  config.parse_argv = 0;
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, program);
  if (!PyStatus_Exception(status))
  {
    char *argv[] = {(char *)program};
    status = PyConfig_SetBytesArgv(&config, 1, argv);
  }
  if (!PyStatus_Exception(status))
    status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status))
  {
    log_error("orthanc_py: Python failed to start with %s: %s%s%s", program,
              status.func ? status.func : "", status.func ? ": " : "",
              status.err_msg ? status.err_msg : "unknown error");
    return -1;
  }
  return 0;
}

/* Calls orthanc_py._runtime.<name>(*args); returns the result or NULL after
 * printing the traceback (sys.stderr then goes to Orthanc's log). */
static PyObject *call_runtime(const char *name, PyObject *args)
{
  PyObject *module = PyImport_ImportModule("orthanc_py._runtime");
  PyObject *result = NULL;
  if (module != NULL)
  {
    PyObject *function = PyObject_GetAttrString(module, name);
    if (function != NULL)
    {
      result = PyObject_CallObject(function, args);
      Py_DECREF(function);
    }
    Py_DECREF(module);
  }
  if (result == NULL)
  {
    PyErr_Print();
    log_error("orthanc_py: orthanc_py._runtime.%s() failed (traceback above)", name);
  }
  return result;
}

/* A thread state is kept on each Orthanc thread that calls Python (see
 * orthanc_py_pin_thread); this key's destructor releases it when the thread
 * ends, so that short-lived threads (archive loaders, job workers) leave
 * nothing behind. */
static pthread_key_t pinned_key;
static int process_exiting = 0;

static void release_pinned_thread(void *value)
{
  (void)value;
  /* At process exit the interpreter is left as it is (see at_process_exit);
   * a thread state that Python itself already deleted needs nothing. */
  if (process_exiting || PyGILState_GetThisThreadState() == NULL)
    return;
  PyGILState_STATE state = PyGILState_Ensure();
  PyObject *result = call_runtime("thread_ended", NULL);
  Py_XDECREF(result);
  /* The Ensure above and the one that pinned the state: the second release
   * brings the thread's count to zero, which deletes its thread state. */
  PyGILState_Release(state == PyGILState_UNLOCKED ? PyGILState_LOCKED : state);
  PyGILState_Release(PyGILState_UNLOCKED);
}

/* Called through ctypes.PyDLL (the GIL held) the first time an Orthanc thread
 * enters a Python callback: one more PyGILState_Ensure, released only by the
 * key's destructor, keeps the thread state for the life of the thread instead
 * of ctypes creating and destroying one on every call. */
ORTHANC_PLUGINS_API int orthanc_py_pin_thread(void)
{
  if (pthread_getspecific(pinned_key) != NULL)
    return 0;
  PyGILState_Ensure();
  pthread_setspecific(pinned_key, &pinned_key);
  return 1;
}

/* Python's own exit functions (the script's atexit hooks, multiprocessing's
 * clean-up) run when the process exits, as they would in `python script.py`.
 * The interpreter is not finalized: threads the script left running keep it
 * in use, and Orthanc's static destructors still follow. */
static void at_process_exit(void)
{
  process_exiting = 1;
  PyGILState_STATE state = PyGILState_Ensure();
  PyObject *result = call_runtime("process_exit", NULL);
  Py_XDECREF(result);
  PyGILState_Release(state);
}

/* Starts the interpreter once per process. Orthanc restarts in the same
 * process (POST /tools/reset, a configuration change): it finalizes and
 * unloads its plugins, then loads and initializes them again. The loader
 * pins itself in memory (RTLD_NODELETE) so that the re-loaded copy is this
 * one, with this state; a second interpreter could not import C extensions
 * such as numpy again. */
static int interpreter_started = 0;

static int start_once(const char *loader, const char *venv)
{
  if (interpreter_started)
    return 0;
  if (Py_IsInitialized())
  {
    log_error("orthanc_py: Python is already running in this Orthanc (another Python plugin, such "
              "as the official one, is loaded); keep only one of them in \"Plugins\"");
    return -1;
  }
  if (dlopen(loader, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == NULL)
  {
    log_error("orthanc_py: cannot pin the loader %s in memory: %s", loader, dlerror());
    return -1;
  }
  if (publish_libpython() != 0)
    return -1;
  char program[PATH_MAX + 16];
  snprintf(program, sizeof(program), "%s/bin/python3", venv);
  if (access(program, X_OK) != 0)
    snprintf(program, sizeof(program), "%s/bin/python", venv);
  if (start_interpreter(program) != 0)
    return -1;
  if (pthread_key_create(&pinned_key, release_pinned_thread) != 0)
  {
    log_error("orthanc_py: cannot create a thread-local key");
    return -1;
  }
  atexit(at_process_exit);
  interpreter_started = 1;
  /* Callbacks arrive on Orthanc's threads and take the GIL themselves. */
  PyEval_SaveThread();
  return 0;
}

ORTHANC_PLUGINS_API int32_t OrthancPluginInitialize(OrthancPluginContext *c)
{
  context = c;
  if (!OrthancPluginCheckVersionAdvanced(c, ORTHANC_PY_MIN_MAJOR, ORTHANC_PY_MIN_MINOR,
                                         ORTHANC_PY_MIN_REVISION))
  {
    log_error("orthanc_py: this Orthanc (%s) is too old; orthanc_py needs Orthanc %d.%d.%d or newer",
              c->orthancVersion, ORTHANC_PY_MIN_MAJOR, ORTHANC_PY_MIN_MINOR,
              ORTHANC_PY_MIN_REVISION);
    return -1;
  }

  char loader[PATH_MAX], venv[PATH_MAX], version[32];
  if (path_of_symbol((const void *)&OrthancPluginInitialize, loader, sizeof(loader)) != 0)
  {
    log_error("orthanc_py: cannot find the path of the orthanc_py loader itself");
    return -1;
  }
  if (find_venv(loader, venv, sizeof(venv)) != 0)
  {
    log_error("orthanc_py: the loader %s is not inside a Python virtual environment (no pyvenv.cfg "
              "in any folder above it); install orthanc-py into a venv and use the path printed "
              "by that venv's `orthanc-py plugin-path`", loader);
    return -1;
  }
  if (venv_python_version(venv, version, sizeof(version)) != 0)
  {
    log_error("orthanc_py: %s/pyvenv.cfg names no Python version; recreate the venv with "
              "`python3 -m venv %s` and reinstall orthanc-py", venv, venv);
    return -1;
  }
  if (strcmp(version, orthanc_py_loader_python) != 0)
  {
    log_error("orthanc_py: the loader %s was built for Python %s but its venv %s is Python %s; "
              "reinstall orthanc-py in that venv (`orthanc-py doctor` run from it prints the command)",
              loader, orthanc_py_loader_python, venv, version);
    return -1;
  }
  /* The libpython actually loaded (found through the loader's run path) must
   * be the same minor version as the headers it was compiled against. */
  if (strncmp(Py_GetVersion(), orthanc_py_loader_python, strlen(orthanc_py_loader_python)) != 0 ||
      Py_GetVersion()[strlen(orthanc_py_loader_python)] != '.')
  {
    log_error("orthanc_py: the loader was built for Python %s but libpython %s was loaded; "
              "reinstall orthanc-py in its venv", orthanc_py_loader_python, Py_GetVersion());
    return -1;
  }
  if (start_once(loader, venv) != 0)
    return -1;

  PyGILState_STATE state = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(Ks)", (unsigned long long)(uintptr_t)c, loader);
  PyObject *result = args ? call_runtime("start", args) : NULL;
  Py_XDECREF(args);
  int ok = result != NULL && PyObject_IsTrue(result) == 1;
  Py_XDECREF(result);
  running = 1;
  PyGILState_Release(state);
  return ok ? 0 : -1;
}

ORTHANC_PLUGINS_API void OrthancPluginFinalize(void)
{
  if (!running)
    return;
  running = 0;
  PyGILState_STATE state = PyGILState_Ensure();
  PyObject *result = call_runtime("stop", NULL);
  Py_XDECREF(result);
  PyGILState_Release(state);
}

ORTHANC_PLUGINS_API const char *OrthancPluginGetName(void)
{
  return "orthanc_py";
}

ORTHANC_PLUGINS_API const char *OrthancPluginGetVersion(void)
{
  return ORTHANC_PY_VERSION;
}
