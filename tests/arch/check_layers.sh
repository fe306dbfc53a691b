#!/bin/sh
# The layering rules of docs/architecture.md that include paths alone cannot enforce:
#   - no relative or absolute #include paths in the library (they would step around the layer
#     include roots that make an upward include fail to compile);
#   - core knows no device: no CUDA macros and no device-type switch;
#   - core, util, the backends and the kernels never call the public C API (only src/api does).
# Usage: check_layers.sh <repository root>
root=${1:?usage: check_layers.sh <repository root>}
cd "$root" || exit 2
status=0
report() {
  echo "check_layers: $1"
  echo "$2" | sed 's/^/  /'
  status=1
}
hits=$(grep -rnE '#[[:space:]]*include[[:space:]]*"(\.\.|/)' src kernels)
[ -z "$hits" ] || report "relative or absolute include paths (include by layer: \"core/x.hpp\")" "$hits"
hits=$(grep -rnE 'KVP_HAS_CUDA|__CUDACC__|__CUDA_ARCH__|case KVP_DEVICE_|== KVP_DEVICE_CUDA' src/core)
[ -z "$hits" ] || report "device knowledge in src/core (it belongs behind the Backend interface)" "$hits"
hits=$(grep -rnE '\bkvp_[a-z0-9_]+\(' src/core src/util src/backend src/cpu src/cuda kernels | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//|// .*kvp_')
[ -z "$hits" ] || report "public C API calls below src/api" "$hits"
[ $status -eq 0 ] && echo "check_layers: ok"
exit $status
