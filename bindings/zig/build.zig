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
    mod.addImport("c", translate.createModule());
    mod.linkSystemLibrary("kvpages", .{});

    const tests = b.addTest(.{ .root_module = mod });
    const run_tests = b.addRunArtifact(tests);
    const test_step = b.step("test", "Run the kvpages binding tests");
    test_step.dependOn(&run_tests.step);

    // The examples of docs/bindings.md, built and run as part of the tests.
    const examples = [_][]const u8{ "quickstart", "pool", "attention" };
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
        test_step.dependOn(&run_example.step);
        const step_name = if (std.mem.eql(u8, name, "quickstart")) "example" else b.fmt("example-{s}", .{name});
        b.step(step_name, b.fmt("Run the {s} example", .{name})).dependOn(&run_example.step);
    }
}
