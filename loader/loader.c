/*
 * orthanc_py loader: the Orthanc plugin that starts CPython inside Orthanc.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * This file starts and stops the interpreter, and carries each request to a
 * Python route into it (the hottest path, see "REST routes"). Everything else
 * (reading the configuration, running the user's script, every other SDK
 * call) lives in the Python package, reached through
 * orthanc_py._runtime.start()/stop().
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
#include <sys/mman.h>
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
  PyThreadState *state = value;
  /* At process exit the interpreter is left as it is (see at_process_exit). */
  if (process_exiting || state == NULL)
    return;
  /* The state comes from this key, not from PyGILState: glibc clears a
   * thread's keys in the order they were made, and Python's own key, made
   * before this one, may already read NULL here (PyGILState_Ensure would then
   * make a second state, and the pinned one would never be freed). */
  PyEval_RestoreThread(state);
  PyObject *result = call_runtime("thread_ended", NULL);
  Py_XDECREF(result);
  PyThreadState_Clear(state);
  PyThreadState_DeleteCurrent();
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
  pthread_setspecific(pinned_key, PyThreadState_Get());
  return 1;
}

/* --- Python on a stack of its own ------------------------------------------
 *
 * Orthanc's HTTP threads have 100 KiB stacks, while CPython 3.11 to 3.13 let
 * a thread nest 1000 Python calls, and C code such as json.loads() recurse
 * as deep, counting on the megabytes of a main thread: a client's 2 KB of
 * nested JSON overflowed such a stack and ended Orthanc. So every entry of
 * an Orthanc thread with a small stack into Python (a REST route through
 * rest_call(), any other callback through _orthanc_py_loader.call()) runs on
 * a stack of PYTHON_STACK_SIZE that the loader maps for that thread the
 * first time, and unmaps when the thread ends. Python then has the depth it
 * has in `python script.py` and raises RecursionError where it would there.
 * Orthanc's own code that Python calls (the REST API, a storage read) runs
 * on that stack too, so callbacks nested through it share its depth.
 *
 * CPython 3.14 measures the machine stack itself; it is told of the switch
 * (PyUnstable_ThreadState_SetStackProtection, from 3.14.1). Without that
 * function, Python stays on the thread's stack, where 3.14 raises
 * RecursionError on its own. */

#define PYTHON_STACK_SIZE ((size_t)8 * 1024 * 1024)

typedef struct
{
  char *mapping;      /* the stack's mapping, a guard page at its low end; NULL if none */
  char *low;          /* the stack itself, above the guard page, and its size */
  size_t size;
  int checked;        /* whether the thread's own stack size was looked at */
  int small;          /* whether it is smaller than PYTHON_STACK_SIZE */
  int active;         /* Python runs on the mapping now: nested entries stay on it */
  int depth;          /* entries of this thread into Python that have not returned */
} python_stack;

static __thread python_stack this_thread_stack;
/* Its destructor unmaps a thread's stack when the thread ends. */
static pthread_key_t stack_key;

#if PY_VERSION_HEX >= 0x030E0000
typedef int (*set_stack_protection_fn)(PyThreadState *, void *, size_t);
typedef void (*reset_stack_protection_fn)(PyThreadState *);
static set_stack_protection_fn set_stack_protection = NULL;
static reset_stack_protection_fn reset_stack_protection = NULL;
#endif
/* Whether this CPython can run on a stack of ours (see above). */
static int can_switch_stacks = 0;

/* Calls function(argument) with the stack pointer at `top` (16-byte aligned)
 * and returns its result. The caller's frame pointer stays in rbp/x29, so
 * debuggers and unwinders walk back to the thread's own stack. Defined in
 * assembly below, for x86-64 and ARM64; hidden, the loader's own. */
__attribute__((visibility("hidden"))) void *orthanc_py_call_on_stack(void *(*function)(void *), void *argument,
                                                                        void *top);

#if defined(__x86_64__)
__asm__(".pushsection .text\n"
        ".p2align 4\n"
        ".globl orthanc_py_call_on_stack\n"
        ".hidden orthanc_py_call_on_stack\n"
        ".type orthanc_py_call_on_stack, @function\n"
        "orthanc_py_call_on_stack:\n"
        ".cfi_startproc\n"
#if defined(__CET__)
        "  endbr64\n"
#endif
        "  pushq %rbp\n"
        ".cfi_def_cfa_offset 16\n"
        ".cfi_offset %rbp, -16\n"
        "  movq %rsp, %rbp\n"
        ".cfi_def_cfa_register %rbp\n"
        "  movq %rdx, %rsp\n"
        "  movq %rdi, %rax\n"
        "  movq %rsi, %rdi\n"
        "  callq *%rax\n"
        "  movq %rbp, %rsp\n"
        "  popq %rbp\n"
        ".cfi_def_cfa %rsp, 8\n"
        "  retq\n"
        ".cfi_endproc\n"
        ".size orthanc_py_call_on_stack, .-orthanc_py_call_on_stack\n"
        ".popsection\n");
#define HAVE_CALL_ON_STACK 1
#elif defined(__aarch64__)
__asm__(".pushsection .text\n"
        ".p2align 2\n"
        ".globl orthanc_py_call_on_stack\n"
        ".hidden orthanc_py_call_on_stack\n"
        ".type orthanc_py_call_on_stack, %function\n"
        "orthanc_py_call_on_stack:\n"
        ".cfi_startproc\n"
        "  stp x29, x30, [sp, #-16]!\n"
        ".cfi_def_cfa_offset 16\n"
        ".cfi_offset x29, -16\n"
        ".cfi_offset x30, -8\n"
        "  mov x29, sp\n"
        ".cfi_def_cfa_register x29\n"
        "  mov x3, x0\n"
        "  mov x0, x1\n"
        "  mov sp, x2\n"
        "  blr x3\n"
        "  mov sp, x29\n"
        ".cfi_def_cfa_register sp\n"
        "  ldp x29, x30, [sp], #16\n"
        ".cfi_def_cfa_offset 0\n"
        ".cfi_restore x29\n"
        ".cfi_restore x30\n"
        "  ret\n"
        ".cfi_endproc\n"
        ".size orthanc_py_call_on_stack, .-orthanc_py_call_on_stack\n"
        ".popsection\n");
#define HAVE_CALL_ON_STACK 1
#else
#define HAVE_CALL_ON_STACK 0
#endif

#if !HAVE_CALL_ON_STACK || defined(ORTHANC_PY_UCONTEXT_STACKS)
/* Other processors switch through ucontext (two system calls more per
 * entry, for the signal mask); ORTHANC_PY_UCONTEXT_STACKS selects it on any
 * processor, which is how the tests run this path. */
#include <ucontext.h>
static __thread struct
{
  void *(*function)(void *);
  void *argument;
  void *result;
} ucontext_call;

static void run_ucontext_call(void)
{
  ucontext_call.result = ucontext_call.function(ucontext_call.argument);
}

static void *call_on_mapping(void *(*function)(void *), void *argument, char *low, size_t size)
{
  ucontext_t caller, callee;
  if (getcontext(&callee) != 0)
    return function(argument);
  callee.uc_stack.ss_sp = low;
  callee.uc_stack.ss_size = size;
  callee.uc_link = &caller;
  ucontext_call.function = function;
  ucontext_call.argument = argument;
  makecontext(&callee, run_ucontext_call, 0);
  if (swapcontext(&caller, &callee) != 0)
    return function(argument);
  return ucontext_call.result;
}
#else
static void *call_on_mapping(void *(*function)(void *), void *argument, char *low, size_t size)
{
  uintptr_t top = ((uintptr_t)low + size) & ~(uintptr_t)15;
  return orthanc_py_call_on_stack(function, argument, (void *)top);
}
#endif

static size_t python_stack_mapping_size(void)
{
  return PYTHON_STACK_SIZE + (size_t)sysconf(_SC_PAGESIZE);
}

static void unmap_thread_stack(void *mapping)
{
  if (mapping != NULL)
    munmap(mapping, python_stack_mapping_size());
}

/* The calling thread's own stack (lowest address and size); size 0 when unknown. */
static size_t own_stack(char **low)
{
  pthread_attr_t attributes;
  size_t size = 0;
  void *start = NULL;
  if (pthread_getattr_np(pthread_self(), &attributes) != 0)
    return 0;
  if (pthread_attr_getstack(&attributes, &start, &size) != 0)
    size = 0;
  pthread_attr_destroy(&attributes);
  *low = start;
  return size;
}

/* Whether Python should run on a stack of ours on this thread, mapping it
 * the first time. A thread whose own stack is large enough keeps it. */
static int use_python_stack(python_stack *stack)
{
  if (!stack->checked)
  {
    stack->checked = 1;
    char *low;
    size_t size = own_stack(&low);
    stack->small = can_switch_stacks && size != 0 && size < PYTHON_STACK_SIZE;
  }
  if (!stack->small)
    return 0;
  if (stack->mapping == NULL)
  {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t size = python_stack_mapping_size();
    /* Pages are only backed by memory once used: a thread that never
     * recurses costs a few pages. */
    char *mapping = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                         -1, 0);
    if (mapping == MAP_FAILED)
    {
      stack->small = 0;
      log_error("orthanc_py: cannot map a %zu-byte stack for Python on this thread; Python runs on the "
                "thread's own stack, where deep recursion may end Orthanc", size);
      return 0;
    }
    /* The guard page: an overflow faults here instead of writing below. */
    mprotect(mapping, page, PROT_NONE);
    stack->mapping = mapping;
    stack->low = mapping + page;
    stack->size = size - page;
    pthread_setspecific(stack_key, mapping);
  }
  return 1;
}

typedef struct
{
  PyObject *callable;
  PyObject *const *args;
  size_t nargs;
  PyObject *result;
} python_call;

static void *run_python_call(void *argument)
{
  python_call *call = argument;
  call->result = PyObject_Vectorcall(call->callable, call->args, call->nargs, NULL);
  return NULL;
}

/* callable(*args), with the GIL held, on the thread's Python stack when it
 * needs one. Every entry of an Orthanc thread into Python comes here. */
static PyObject *call_python(PyObject *callable, PyObject *const *args, size_t nargs)
{
  python_stack *stack = &this_thread_stack;
  python_call call = {callable, args, nargs, NULL};
  stack->depth++;
  if (stack->active || !use_python_stack(stack))
    run_python_call(&call);
  else
  {
    char *low = stack->low;
    size_t size = stack->size;
#if PY_VERSION_HEX >= 0x030E0000
    PyThreadState *state = PyThreadState_Get();
    if (set_stack_protection(state, low, size) != 0)
    {
      stack->depth--;
      return NULL;
    }
#endif
    stack->active = 1;
    call_on_mapping(run_python_call, &call, low, size);
    stack->active = 0;
#if PY_VERSION_HEX >= 0x030E0000
    reset_stack_protection(state);
#endif
  }
  stack->depth--;
  return call.result;
}

/* Decides whether this CPython may switch stacks; once, at start. */
static void setup_python_stacks(void)
{
#if PY_VERSION_HEX >= 0x030E0000
  set_stack_protection = (set_stack_protection_fn)dlsym(RTLD_DEFAULT, "PyUnstable_ThreadState_SetStackProtection");
  reset_stack_protection =
      (reset_stack_protection_fn)dlsym(RTLD_DEFAULT, "PyUnstable_ThreadState_ResetStackProtection");
  can_switch_stacks = set_stack_protection != NULL && reset_stack_protection != NULL;
#else
  can_switch_stacks = 1;
#endif
}

/* --- _orthanc_py_loader: the loader's functions for Python -----------------
 *
 * A built-in module, present only inside Orthanc, imported by
 * orthanc_py._capi. */

/* call(function, *args): function(*args) on this thread's Python stack. */
static PyObject *loader_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
  (void)module;
  if (nargs < 1)
  {
    PyErr_SetString(PyExc_TypeError, "call() needs the function to call");
    return NULL;
  }
  return call_python(args[0], args + 1, (size_t)(nargs - 1));
}

/* depth(): how many entries of this thread into Python are running. */
static PyObject *loader_depth(PyObject *module, PyObject *unused)
{
  (void)module;
  (void)unused;
  return PyLong_FromLong(this_thread_stack.depth);
}

/* stack(): where Python runs on this thread, as a dict: the size of the
 * thread's own stack, whether Python is on a stack of the loader's, and how
 * many bytes are left below this call on the stack in use. */
static PyObject *loader_stack(PyObject *module, PyObject *unused)
{
  (void)module;
  (void)unused;
  python_stack *stack = &this_thread_stack;
  char here;
  char *low = NULL;
  size_t size = own_stack(&low);
  if (stack->active)
    low = stack->low;
  Py_ssize_t free_bytes = low != NULL ? (Py_ssize_t)(&here - low) : -1;
  return Py_BuildValue("{s:n,s:O,s:n,s:n}", "thread_stack", (Py_ssize_t)size, "on_python_stack",
                       stack->active ? Py_True : Py_False, "python_stack", (Py_ssize_t)PYTHON_STACK_SIZE,
                       "free", free_bytes);
}

/* An address from Python: an int, or None for NULL (ctypes reads a NULL c_void_p as None). */
static void *address_of(PyObject *value)
{
  return value == Py_None ? NULL : PyLong_AsVoidPtr(value);
}

/* invoke() calls in flight: in all threads, and in this one. */
static long calls_in_flight = 0;
static __thread long this_thread_calls = 0;

/* invoke(service, params): context->InvokeService(context, service, params)
 * with the GIL released; returns Orthanc's error code. params is the address
 * of the service's params struct (an int), bytes (the log services take the
 * text itself), or None. The SDK calls of orthanc_py._sdk_calls all come
 * through here: a builtin call costs a fraction of a ctypes foreign call. */
static PyObject *loader_invoke(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
  (void)module;
  if (nargs != 2)
  {
    PyErr_SetString(PyExc_TypeError, "invoke() takes the service and its params");
    return NULL;
  }
  long service = PyLong_AsLong(args[0]);
  if (service == -1 && PyErr_Occurred())
    return NULL;
  const void *params = NULL;
  if (PyBytes_Check(args[1]))
    params = PyBytes_AS_STRING(args[1]); /* alive: the caller's argument holds it */
  else if (args[1] != Py_None)
  {
    params = PyLong_AsVoidPtr(args[1]);
    if (params == NULL && PyErr_Occurred())
      return NULL;
  }
  if (context == NULL)
  {
    PyErr_SetString(PyExc_RuntimeError, "invoke(): Orthanc's context is gone");
    return NULL;
  }
  OrthancPluginErrorCode code;
  __atomic_add_fetch(&calls_in_flight, 1, __ATOMIC_SEQ_CST);
  this_thread_calls++;
  Py_BEGIN_ALLOW_THREADS
  code = context->InvokeService(context, (_OrthancPluginService)service, params);
  Py_END_ALLOW_THREADS
  this_thread_calls--;
  __atomic_sub_fetch(&calls_in_flight, 1, __ATOMIC_SEQ_CST);
  return PyLong_FromLong((long)code);
}

/* take_bytes(address, size): the size bytes at address, as bytes; then
 * frees them (context->Free). For the memory buffers Orthanc fills. */
static PyObject *loader_take_bytes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
  (void)module;
  if (nargs != 2)
  {
    PyErr_SetString(PyExc_TypeError, "take_bytes() takes an address and a size");
    return NULL;
  }
  void *pointer = address_of(args[0]);
  if (pointer == NULL && PyErr_Occurred())
    return NULL;
  Py_ssize_t size = PyLong_AsSsize_t(args[1]);
  if (size < 0 && PyErr_Occurred())
    return NULL;
  PyObject *copy = PyBytes_FromStringAndSize(pointer != NULL && size > 0 ? (const char *)pointer : "",
                                             pointer != NULL && size > 0 ? size : 0);
  if (pointer != NULL && context != NULL)
    context->Free(pointer); /* freed even when the copy failed (MemoryError): nothing else would */
  return copy;
}

/* take_text(address): the NUL-terminated UTF-8 text at address, as str
 * (undecodable bytes replaced), or None for NULL; then frees it. */
static PyObject *loader_take_text(PyObject *module, PyObject *address)
{
  (void)module;
  void *pointer = address_of(address);
  if (pointer == NULL)
  {
    if (PyErr_Occurred())
      return NULL;
    Py_RETURN_NONE;
  }
  PyObject *text = PyUnicode_DecodeUTF8((const char *)pointer, (Py_ssize_t)strlen((const char *)pointer), "replace");
  if (context != NULL)
    context->Free(pointer);
  return text;
}

/* in_flight(): how many invoke() calls other threads are making right now.
 * Python waits for them to end when Orthanc announces its stop. */
static PyObject *loader_in_flight(PyObject *module, PyObject *unused)
{
  (void)module;
  (void)unused;
  return PyLong_FromLong(__atomic_load_n(&calls_in_flight, __ATOMIC_SEQ_CST) - this_thread_calls);
}

/* free(address): context->Free(address), for memory Orthanc allocated for the plugin. */
static PyObject *loader_free(PyObject *module, PyObject *address)
{
  (void)module;
  void *pointer = address_of(address);
  if (pointer == NULL && PyErr_Occurred())
    return NULL;
  if (pointer != NULL && context != NULL)
    context->Free(pointer);
  Py_RETURN_NONE;
}

static PyObject *loader_want_changes(PyObject *module, PyObject *mask);

static PyMethodDef loader_methods[] = {
    {"call", (PyCFunction)(void (*)(void))loader_call, METH_FASTCALL,
     "call(function, *args): function(*args) on this thread's Python stack."},
    {"depth", loader_depth, METH_NOARGS, "depth(): this thread's entries into Python that are running."},
    {"invoke", (PyCFunction)(void (*)(void))loader_invoke, METH_FASTCALL,
     "invoke(service, params): Orthanc's InvokeService, the GIL released; returns the error code."},
    {"free", loader_free, METH_O, "free(address): frees memory Orthanc allocated for the plugin."},
    {"take_bytes", (PyCFunction)(void (*)(void))loader_take_bytes, METH_FASTCALL,
     "take_bytes(address, size): copies Orthanc's memory into bytes, then frees it."},
    {"take_text", loader_take_text, METH_O, "take_text(address): copies Orthanc's C string into str, then frees it."},
    {"want_changes", loader_want_changes, METH_O, "want_changes(mask): bit n: change type n goes to Python."},
    {"in_flight", loader_in_flight, METH_NOARGS, "in_flight(): invoke() calls other threads are making now."},
    {"stack", loader_stack, METH_NOARGS,
     "stack(): {thread_stack, on_python_stack, python_stack, free}: where Python runs on this thread."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef loader_module = {PyModuleDef_HEAD_INIT, "_orthanc_py_loader",
                                           "The orthanc_py loader's functions (inside Orthanc only).", -1,
                                           loader_methods, NULL, NULL, NULL, NULL};

static PyObject *init_loader_module(void)
{
  return PyModule_Create(&loader_module);
}

/* --- REST routes -----------------------------------------------------------
 *
 * Every request to a Python route goes through here. Python registers the
 * route with orthanc_py_register_rest(); Orthanc calls one of the slot
 * functions below, which calls the route's Python callback as
 * callback(output, url, request), the two pointers as integers. The callback
 * returns Orthanc's error code, or (code, body, mime type) when it left its
 * answer to be sent here: the answer is then handed to Orthanc after the GIL
 * is released, so that the request takes the GIL once, and a client slow to
 * read its answer holds up its own thread only, never the other callbacks.
 *
 * Orthanc's REST callbacks carry no user data, so each route needs a C
 * function of its own: REST_SLOTS of them are generated below. Routes
 * beyond them share one more entry, the overflow entry, whose Python
 * callable finds the route by matching the URI itself
 * (orthanc_py_register_rest_overflow()). */

#define REST_SLOTS 1000 /* the number of rest_slot_N functions THOUSAND() makes below */
#define REST_SLOTS_TEXT "1000" /* REST_SLOTS, for messages */
#define REST_OVERFLOW REST_SLOTS /* the entry in rest_routes[] of the routes past the slots */
/* Answers up to this size are copied, and the GIL released before they are
 * sent; larger ones are sent from the Python object, the GIL released around
 * the call and taken again to let go of the object. */
#define ANSWER_COPY_LIMIT (64 * 1024)

typedef struct
{
  PyObject *callback;
  char *where; /* "REST callback hello for /hello", for the log */
} rest_route;

static rest_route rest_routes[REST_SLOTS + 1];
static int rest_routes_used = 0;

static OrthancPluginErrorCode send_answer(OrthancPluginRestOutput *output, const void *body, size_t size,
                                          const char *mime, int slot)
{
  _OrthancPluginAnswerBuffer params = {output, body, (uint32_t)size, mime};
  OrthancPluginErrorCode code = context->InvokeService(context, _OrthancPluginService_AnswerBuffer, &params);
  if (code == OrthancPluginErrorCode_NetworkProtocol)
  {
    /* The client left before its answer: not a fault of the server, and a
     * flood under load at any higher level. */
    char message[512];
    snprintf(message, sizeof(message), "orthanc_py: %s: the client closed the connection before its answer",
             rest_routes[slot].where);
    OrthancPluginLogInfo(context, message);
  }
  else if (code != OrthancPluginErrorCode_Success)
    log_error("orthanc_py: %s: sending its answer (%zu bytes) failed: %s", rest_routes[slot].where, size,
              OrthancPluginGetErrorDescription(context, code));
  return code;
}

/* Sends the answer that the callback returned in `result`, (code, body,
 * mime); gives up the GIL taken as `gil` on the way. */
static OrthancPluginErrorCode answer_and_release(int slot, OrthancPluginRestOutput *output, PyObject *result,
                                                 PyGILState_STATE gil)
{
  long code = PyLong_AsLong(PyTuple_GET_ITEM(result, 0));
  PyObject *mime = PyTuple_GET_ITEM(result, 2);
  Py_buffer body;
  if ((code == -1 && PyErr_Occurred()) || !PyBytes_Check(mime) ||
      PyObject_GetBuffer(PyTuple_GET_ITEM(result, 1), &body, PyBUF_SIMPLE) != 0)
  {
    PyErr_Clear();
    log_error("orthanc_py: %s: the answer handed to the loader is not (code, body, mime type)",
              rest_routes[slot].where);
    Py_DECREF(result);
    PyGILState_Release(gil);
    return OrthancPluginErrorCode_Plugin;
  }
  OrthancPluginErrorCode sent;
  size_t mime_size = (size_t)PyBytes_GET_SIZE(mime) + 1;
  size_t size = (size_t)body.len;
  char *copy = size <= ANSWER_COPY_LIMIT ? malloc(size + mime_size) : NULL;
  if (copy != NULL)
  {
    memcpy(copy, body.buf, size);
    memcpy(copy + size, PyBytes_AS_STRING(mime), mime_size);
    PyBuffer_Release(&body);
    Py_DECREF(result);
    PyGILState_Release(gil);
    sent = send_answer(output, copy, size, copy + size, slot);
    free(copy);
  }
  else
  {
    Py_BEGIN_ALLOW_THREADS
    sent = send_answer(output, body.buf, size, PyBytes_AS_STRING(mime), slot);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&body);
    Py_DECREF(result);
    PyGILState_Release(gil);
  }
  return sent != OrthancPluginErrorCode_Success ? sent : (OrthancPluginErrorCode)code;
}

static OrthancPluginErrorCode rest_call(int slot, OrthancPluginRestOutput *output, const char *url,
                                        const OrthancPluginHttpRequest *request)
{
  PyGILState_STATE gil = PyGILState_Ensure();
  PyObject *args[3] = {PyLong_FromVoidPtr(output), NULL, PyLong_FromVoidPtr((void *)request)};
  if (url != NULL)
    args[1] = PyBytes_FromString(url);
  else
  {
    Py_INCREF(Py_None);
    args[1] = Py_None;
  }
  PyObject *result = NULL;
  if (args[0] != NULL && args[1] != NULL && args[2] != NULL)
    result = call_python(rest_routes[slot].callback, args, 3);
  for (int i = 0; i < 3; i++)
    Py_XDECREF(args[i]);
  if (result != NULL && PyTuple_CheckExact(result) && PyTuple_GET_SIZE(result) == 3)
    return answer_and_release(slot, output, result, gil);
  OrthancPluginErrorCode code = OrthancPluginErrorCode_Plugin;
  if (result != NULL && PyLong_CheckExact(result))
  {
    long value = PyLong_AsLong(result);
    if (value != -1 || !PyErr_Occurred())
      code = (OrthancPluginErrorCode)value;
  }
  if (PyErr_Occurred())
  {
    /* The callback catches and logs its handler's exceptions itself: this
     * is Python failing around it (no memory, say). Written as unraisable,
     * to sys.stderr (Orthanc's log): PyErr_Print() would end the process
     * on a SystemExit. */
    PyErr_WriteUnraisable(rest_routes[slot].callback);
    log_error("orthanc_py: %s failed (traceback above)", rest_routes[slot].where);
  }
  Py_XDECREF(result);
  PyGILState_Release(gil);
  return code;
}

/* REST_SLOTS functions rest_slot_1000 ... rest_slot_1999 (the leading 1
 * keeps the pasted numbers decimal), each calling rest_call(its number - 1000). */
#define REST_SLOT(n)                                                                                      \
  static OrthancPluginErrorCode rest_slot_##n(OrthancPluginRestOutput *output, const char *url,         \
                                              const OrthancPluginHttpRequest *request)                  \
  {                                                                                                       \
    return rest_call(n - 1000, output, url, request);                                                    \
  }
#define REST_ENTRY(n) rest_slot_##n,
#define TEN(X, p) X(p##0) X(p##1) X(p##2) X(p##3) X(p##4) X(p##5) X(p##6) X(p##7) X(p##8) X(p##9)
#define HUNDRED(X, p) TEN(X, p##0) TEN(X, p##1) TEN(X, p##2) TEN(X, p##3) TEN(X, p##4) \
  TEN(X, p##5) TEN(X, p##6) TEN(X, p##7) TEN(X, p##8) TEN(X, p##9)
#define THOUSAND(X, p) HUNDRED(X, p##0) HUNDRED(X, p##1) HUNDRED(X, p##2) HUNDRED(X, p##3) \
  HUNDRED(X, p##4) HUNDRED(X, p##5) HUNDRED(X, p##6) HUNDRED(X, p##7) HUNDRED(X, p##8) HUNDRED(X, p##9)

THOUSAND(REST_SLOT, 1)
static const OrthancPluginRestCallback rest_slots[] = {THOUSAND(REST_ENTRY, 1)};
_Static_assert(sizeof(rest_slots) / sizeof(rest_slots[0]) == REST_SLOTS,
               "REST_SLOTS must be the number of rest_slot_N functions generated above");

static OrthancPluginErrorCode rest_overflow(OrthancPluginRestOutput *output, const char *url,
                                            const OrthancPluginHttpRequest *request)
{
  return rest_call(REST_OVERFLOW, output, url, request);
}

/* Called through ctypes.PyDLL (the GIL held): registers `callback` for the
 * URIs matching `regex`, without Orthanc's global lock. Returns 0, or -1 when
 * every slot is taken (the caller then registers the route itself). */
ORTHANC_PLUGINS_API int orthanc_py_register_rest(const char *regex, PyObject *callback, const char *where)
{
  if (context == NULL || rest_routes_used >= REST_SLOTS)
    return -1;
  char *where_copy = strdup(where != NULL ? where : "a REST callback");
  if (where_copy == NULL)
    return -1;
  int slot = rest_routes_used++;
  Py_INCREF(callback);
  rest_routes[slot].callback = callback;
  rest_routes[slot].where = where_copy;
  OrthancPluginRegisterRestCallbackNoLock(context, regex, rest_slots[slot]);
  return 0;
}

/* Called through ctypes.PyDLL (the GIL held) once every slot is taken:
 * registers the overflow entry for the URIs matching `regex`. `dispatcher`,
 * the same for every such route, is called as a route's callback is, and
 * finds the route whose regular expression matches the URI. Returns 0, or -1
 * outside Orthanc or without memory. */
ORTHANC_PLUGINS_API int orthanc_py_register_rest_overflow(const char *regex, PyObject *dispatcher)
{
  if (context == NULL)
    return -1;
  rest_route *overflow = &rest_routes[REST_OVERFLOW];
  if (overflow->callback == NULL)
  {
    overflow->where = strdup("a REST route past the loader's first " REST_SLOTS_TEXT);
    if (overflow->where == NULL)
      return -1;
    Py_INCREF(dispatcher);
    overflow->callback = dispatcher;
  }
  OrthancPluginRegisterRestCallbackNoLock(context, regex, rest_overflow);
  return 0;
}

/* --- changes -----------------------------------------------------------------
 *
 * Orthanc calls its on-change callbacks for every change (each stored
 * instance makes several), on its own thread. Entering Python for each would
 * take the GIL from the threads storing instances: the loader registers the
 * callback itself and enters Python only for the change types Python asked
 * for (orthanc_py._events keeps the mask to those of its handlers). */

static PyObject *change_callback = NULL;
static uint64_t wanted_changes = 0; /* bit n: change type n goes to Python; types from 64 on always do */

static OrthancPluginErrorCode on_change(OrthancPluginChangeType type, OrthancPluginResourceType resource,
                                        const char *resource_id)
{
  if ((unsigned)type < 64 && !((__atomic_load_n(&wanted_changes, __ATOMIC_RELAXED) >> (unsigned)type) & 1u))
    return OrthancPluginErrorCode_Success;
  PyGILState_STATE gil = PyGILState_Ensure();
  OrthancPluginErrorCode code = OrthancPluginErrorCode_Success;
  PyObject *callback = change_callback;
  if (callback != NULL)
  {
    Py_INCREF(callback);
    PyObject *args[3] = {PyLong_FromLong((long)type), PyLong_FromLong((long)resource),
                         resource_id != NULL ? PyBytes_FromString(resource_id) : (Py_INCREF(Py_None), Py_None)};
    PyObject *result = NULL;
    if (args[0] != NULL && args[1] != NULL && args[2] != NULL)
      result = call_python(callback, args, 3);
    for (int i = 0; i < 3; i++)
      Py_XDECREF(args[i]);
    if (result == NULL)
    {
      /* The callback catches and logs what its handlers raise: this is Python failing around it. */
      PyErr_WriteUnraisable(callback);
      log_error("orthanc_py: the on-change callback failed (traceback above)");
      code = OrthancPluginErrorCode_Plugin;
    }
    Py_XDECREF(result);
    Py_DECREF(callback);
  }
  PyGILState_Release(gil);
  return code;
}

/* Called through ctypes.PyDLL (the GIL held): makes `callback(type, resource,
 * id)` the receiver of the wanted changes, registering with Orthanc on the
 * first call of each run of Orthanc. */
ORTHANC_PLUGINS_API int orthanc_py_register_on_change(PyObject *callback)
{
  if (context == NULL)
    return -1;
  PyObject *previous = change_callback;
  Py_INCREF(callback);
  change_callback = callback;
  Py_XDECREF(previous);
  return OrthancPluginRegisterOnChangeCallback(context, on_change) == OrthancPluginErrorCode_Success ? 0 : -1;
}

/* want_changes(mask): bit n of mask: change type n goes to Python. */
static PyObject *loader_want_changes(PyObject *module, PyObject *mask)
{
  (void)module;
  unsigned long long value = PyLong_AsUnsignedLongLong(mask);
  if (value == (unsigned long long)-1 && PyErr_Occurred())
    return NULL;
  __atomic_store_n(&wanted_changes, (uint64_t)value, __ATOMIC_RELAXED);
  Py_RETURN_NONE;
}

/* Orthanc restarting in the process has dropped every route: the script
 * registers its routes again from the first slot. The GIL is held. */
static void forget_rest_routes(void)
{
  for (int slot = 0; slot < rest_routes_used; slot++)
  {
    Py_CLEAR(rest_routes[slot].callback);
    free(rest_routes[slot].where);
    rest_routes[slot].where = NULL;
  }
  rest_routes_used = 0;
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
  if (PyImport_AppendInittab("_orthanc_py_loader", init_loader_module) != 0)
  {
    log_error("orthanc_py: cannot add the loader's module to Python");
    return -1;
  }
  if (start_interpreter(program) != 0)
    return -1;
  setup_python_stacks();
  if (pthread_key_create(&pinned_key, release_pinned_thread) != 0 ||
      pthread_key_create(&stack_key, unmap_thread_stack) != 0)
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
  forget_rest_routes();
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
