# The library's layers as CMake OBJECT libraries (docs/architecture.md).
#
# Sources include headers by layer-qualified paths ("util/error.hpp", "backend/jobs.hpp",
# "kernels/launch.hpp"). Each layer directory gets an include root of its own in the build tree,
# ${KVP_LAYER_ROOTS}/<name>/, holding one symbolic link <name> -> the directory. A layer's include
# path is its own roots plus those of the layers it USES, and nothing else (no src/, no
# repository root): an include of a layer it may not use finds no file and fails to compile.
set(KVP_LAYER_ROOTS ${PROJECT_BINARY_DIR}/layer-roots)

# kvp_layer_root(<dir>): the include root of a layer directory (created once).
function(kvp_layer_root dir out)
  get_filename_component(name ${dir} NAME)
  set(root ${KVP_LAYER_ROOTS}/${name})
  file(MAKE_DIRECTORY ${root})
  file(CREATE_LINK ${PROJECT_SOURCE_DIR}/${dir} ${root}/${name} SYMBOLIC)
  set(${out} ${root} PARENT_SCOPE)
endfunction()

# Include roots, flags and definitions of a layer's object library: its own roots (set on the
# target by kvp_add_layer) plus those of the layers in USES.
function(kvp_layer_setup target)
  cmake_parse_arguments(L "" "" "USES" ${ARGN})
  foreach(used ${L_USES})
    get_target_property(roots kvp_${used} KVP_LAYER_OWN_ROOTS)
    target_include_directories(${target} PRIVATE ${roots})
  endforeach()
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/include ${KVP_GEN_INCLUDE})
  target_compile_definitions(${target} PRIVATE KVP_BUILDING_LIBRARY $<$<BOOL:${KVPAGES_API_ARMOR}>:KVP_API_ARMOR=1>)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -ffp-contract=off>)
  set_target_properties(${target} PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
endfunction()

# kvp_add_layer(<name> DIRS <dir>... [USES <layer>...] [EXCLUDE <file>...]): the object library
# kvp_<name> of every .cpp (and, with CUDA, .cu) file in the directories.
function(kvp_add_layer name)
  cmake_parse_arguments(L "" "" "DIRS;USES;EXCLUDE" ${ARGN})
  set(sources)
  set(roots)
  foreach(dir ${L_DIRS})
    file(GLOB found CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${dir}/*.cpp ${PROJECT_SOURCE_DIR}/${dir}/*.cu)
    list(APPEND sources ${found})
    kvp_layer_root(${dir} root)
    list(APPEND roots ${root})
  endforeach()
  foreach(ex ${L_EXCLUDE})
    list(REMOVE_ITEM sources ${PROJECT_SOURCE_DIR}/${ex})
  endforeach()
  add_library(kvp_${name} OBJECT ${sources})
  set_target_properties(kvp_${name} PROPERTIES KVP_LAYER_OWN_ROOTS "${roots}")
  target_include_directories(kvp_${name} PRIVATE ${roots})
  kvp_layer_setup(kvp_${name} USES ${L_USES})
endfunction()

# Link options and libraries of a shared library made of the layers' objects.
function(kvp_link_library_deps target)
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_link_options(${target} PRIVATE
    -Wl,--version-script=${PROJECT_SOURCE_DIR}/src/kvpages.map
    -Wl,--no-undefined)
  target_link_libraries(${target} PRIVATE ${KVP_LIBRARY_DEPS})
endfunction()
