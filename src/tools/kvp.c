/* kvp: the kvpages command-line tool (plan a cache, run the demo and a quick benchmark, inspect files). */
#include <stdio.h>
#include <string.h>

#include "kvp_tool.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: kvp <command> [options]\n"
          "\n"
          "commands:\n"
          "  plan      print the planning numbers for a model shape (kvp plan --help)\n"
          "  demo      run the CPU inference demo (the README's main job)\n"
          "  inspect   print a serialized cache file's header and verify its checksums\n"
          "  load      load a serialized cache file into a new CPU cache (and save it again)\n"
          "  bench     time concatenate, serialization and the page pool on the CPU against memcpy\n"
          "  store     list, summarise or check a block store (storage tier): kvp store ls|stat|scrub SPEC\n"
          "  version   print the library version and build information\n"
          "  help      print this message\n"
          "\n"
          "Every command has --help; options take their value as --opt VALUE or --opt=VALUE.\n"
          "plan, inspect, load, bench and store print one JSON object with --json (docs/kvp-tool.md).\n");
}

int main(int argc, char **argv) {
  const char *cmd;
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  cmd = argv[1];
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    usage(stdout);
    return 0;
  }
  if (kvp_check_abi(KVP_VERSION_NUMBER) != KVP_OK) {
    fprintf(stderr, "kvp: %s\n", kvp_last_error_message());
    return 1;
  }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    if (argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
      printf("usage: kvp version\n\nPrints the library version and build information (CUDA backend, CPU "
             "instruction set, compiler).\n");
      return 0;
    }
    if (argc > 2) {
      fprintf(stderr, "kvp version: unexpected argument '%s' (valid options: --help)\n", argv[2]);
      return 2;
    }
    printf("%s\n", kvp_build_info());
    return 0;
  }
  if (strcmp(cmd, "plan") == 0) return kvp_cmd_plan(argc - 1, argv + 1);
  if (strcmp(cmd, "demo") == 0) return kvp_cmd_demo(argc - 1, argv + 1);
  if (strcmp(cmd, "inspect") == 0) return kvp_cmd_inspect(argc - 1, argv + 1);
  if (strcmp(cmd, "load") == 0) return kvp_cmd_load(argc - 1, argv + 1);
  if (strcmp(cmd, "bench") == 0) return kvp_cmd_bench(argc - 1, argv + 1);
  if (strcmp(cmd, "store") == 0) return kvp_cmd_store(argc - 1, argv + 1);
  fprintf(stderr, "kvp: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return 2;
}
