// Atomic replacement of a file. The new content goes to a file in the target's directory that has
// no name (O_TMPFILE) where the filesystem supports it, else to a temporary file
// "<target>.tmp.XXXXXX"; commit() syncs it (unless told not to), gives an unnamed file the temporary name, renames it
// over the target and syncs the directory. Until the rename the old file is untouched and the
// destructor removes the temporary file; a failure of the directory sync after the rename still
// throws, with the target already replaced.
//
// The target is `path`, or the file a symbolic link at `path` points to (the link stays). The new
// file keeps the mode of the file it replaces; a new file gets 0666 less the umask.
//
// A file that will be synced has its writeback started every 1 MiB written
// (sync_file_range, where the system has it), so the disk writes while the caller still fills the
// file and the final fsync waits only for the tail (a synced 256 MiB kvp_serialize_to_file on a
// virtio disk: 320-365 -> 228-270 ms).
#pragma once

#include <atomic>
#include <cstdint>

#include "util/memory.hpp"

namespace kvp::detail {

class AtomicFile {
 public:
  // How commit() makes the replacement last: kSynced syncs the new file before the rename and the
  // directory after it (the new content survives a power loss); kUnsynced skips both syncs (other
  // processes still see the old file or the whole new one, but after a power loss or kernel crash
  // the target may hold the old file, the new one or an empty or partial file).
  enum class Sync { kSynced, kUnsynced };
  static constexpr Sync synced_if(bool sync) noexcept { return sync ? Sync::kSynced : Sync::kUnsynced; }
  // Opens the new file. Throws KVP_ERR_IO naming `function` (a dangling or looping link at
  // `path` included).
  AtomicFile(const char* path, const char* function, Sync sync);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Writes all n bytes at the current offset (retrying short writes); throws KVP_ERR_IO.
  void write(const void* p, size_t n);
  // Writes all n bytes at offset `off` (pwrite: the current offset is unchanged); callers may
  // write different ranges from several threads at once. Throws KVP_ERR_IO.
  void write_at(uint64_t off, const void* p, size_t n);
  // [fsync], naming, rename over the target, [fsync of the directory]; throws KVP_ERR_IO.
  void commit();

 private:
  // Counts n bytes written; starts the writeback of the file each kWriteBackBytes (kSynced).
  void wrote(size_t n) noexcept;
  void link_unnamed();
  // Closes the file and removes its temporary name unless it was renamed.
  void discard() noexcept;

  HostString target_;  // the file replaced
  HostString tmp_;     // the temporary name; empty while the file has none
  const char* function_;
  Sync sync_;
  std::atomic<uint64_t> unsent_{0};  // bytes written since the writeback was last started
  int fd_ = -1;
  bool renamed_ = false;
};

}  // namespace kvp::detail
