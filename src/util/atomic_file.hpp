// Atomic replacement of a file: the new content goes to a temporary file next to the target;
// commit() syncs it, renames it over the target and syncs the directory. Until the rename the old
// file is untouched and the destructor removes the temporary file; a failure of the directory sync
// after the rename still throws, with the target already replaced.
#pragma once

#include "util/memory.hpp"

namespace kvp::detail {

class AtomicFile {
 public:
  // Creates the temporary file "<path>.tmp.XXXXXX" (mode 0644). Throws KVP_ERR_IO naming `function`.
  AtomicFile(const char* path, const char* function);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Writes all n bytes at the current offset (retrying short writes); throws KVP_ERR_IO.
  void write(const void* p, size_t n);
  // fsync, close, rename over the target, fsync of the directory; throws KVP_ERR_IO.
  void commit();

 private:
  HostString path_;
  HostString tmp_;
  const char* function_;
  int fd_ = -1;
  bool renamed_ = false;
};

}  // namespace kvp::detail
