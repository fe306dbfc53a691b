// Config and runtime metadata <-> JSON with the reference's key names (SPEC.md §8.1).
#pragma once

#include <cstddef>

#include "kvpages/config.h"
#include "kvpages/metadata.h"
#include "util/memory.hpp"

namespace kvp::detail::json {
// Python repr() of a finite double: shortest round-trip digits, fixed notation for decimal
// exponents in [-4, 16), else d.ddde±XX; integral values keep ".0".
HostString py_float_repr(double v);
// The reference's to_json() of a config record (not validated; version/dtype must have names).
HostString config_to_json(const kvp_config& c, const char* function);
// The reference's from_json(): unknown keys ignored, required model fields, no validation.
kvp_config config_from_json(const char* text, size_t len, const char* function);
// Runtime metadata with real integer arrays (host arrays only).
HostString metadata_to_json(const kvp_metadata* md, const char* function);
kvp_metadata* metadata_from_json(const char* text, size_t len, const char* function);
}  // namespace kvp::detail::json
