/* The C API seen by the Zig binding (translated by build.zig). */
#include <kvpages.h>
#include <kvpages/dlpack.h>
