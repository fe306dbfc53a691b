//! `zig build test`: translates the kvpages C headers (the `c` module, Zig's replacement for
//! @cImport since 0.16), builds the idiomatic `kvpages` module on top of it, links the C library
//! through pkg-config (set PKG_CONFIG_PATH for a non-system prefix) and runs the tests.
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});

    const translate = b.addTranslateC(.{
        .root_source_file = b.path("src/c.h"),
        .target = target,
        .optimize = optimize,
    });
    // Include directories of the installed headers, from pkg-config.
    const cflags = b.run(&.{ "pkg-config", "--cflags-only-I", "kvpages" });
    var it = std.mem.tokenizeAny(u8, cflags, " \t\r\n");
    while (it.next()) |flag| {
        if (std.mem.startsWith(u8, flag, "-I")) translate.addIncludePath(.{ .cwd_relative = flag[2..] });
    }

    const mod = b.addModule("kvpages", .{
        .root_source_file = b.path("src/kvpages.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    const c_mod = translate.createModule();
    mod.addImport("c", c_mod);
    mod.linkSystemLibrary("kvpages", .{});

    // The tests get the generated list of public C functions for the coverage check
    // (src/coverage.zig); it exists in the source tree, not in an installed copy of the binding.
    const test_mod = b.createModule(.{
        .root_source_file = b.path("src/kvpages.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    test_mod.addImport("c", c_mod);
    test_mod.addAnonymousImport("api_names", .{ .root_source_file = b.path("../../tests/package/api_names.h") });
    test_mod.linkSystemLibrary("kvpages", .{});
    const tests = b.addTest(.{ .root_module = test_mod });
    const run_tests = b.addRunArtifact(tests);
    // Tests write temporary files under their working directory: one in the build cache.
    run_tests.setCwd(b.addWriteFiles().getDirectory());
    const test_step = b.step("test", "Run the kvpages binding tests and every example");
    test_step.dependOn(&run_tests.step);

    // The examples of docs/bindings.md, built and run as part of the tests. Each gets a path in
    // the build cache to write files to (argv[1]), so nothing is written into the source tree.
    const examples = [_][]const u8{ "quickstart", "pool", "attention", "new_user" };
    for (examples) |name| {
        const example = b.addExecutable(.{
            .name = name,
            .root_module = b.createModule(.{
                .root_source_file = b.path(b.fmt("examples/{s}.zig", .{name})),
                .target = target,
                .optimize = optimize,
                .imports = &.{.{ .name = "kvpages", .module = mod }},
            }),
        });
        const run_example = b.addRunArtifact(example);
        _ = run_example.addOutputFileArg(b.fmt("{s}.kvps", .{name}));
        run_example.has_side_effects = true; // run every time, not only when its inputs change
        test_step.dependOn(&run_example.step);
        const step_name = if (std.mem.eql(u8, name, "quickstart")) "example" else b.fmt("example-{s}", .{name});
        b.step(step_name, b.fmt("Run the {s} example", .{name})).dependOn(&run_example.step);
    }
}
