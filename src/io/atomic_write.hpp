// Crash-safe file output: write a sibling temp file, fsync it, then rename it over the target,
// so a reader (or a rerun after a crash) never sees a partially written result.
#pragma once
#include <cstdio>
#include <functional>
#include <string>

namespace saescale::io {

// Calls writer(f) on "<path>.tmp.<pid>" and renames it to path. Write errors (ferror) and
// exceptions from writer remove the temp file; failures throw saescale::Error, writer's own
// exceptions are rethrown unchanged.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& writer);

void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace saescale::io
