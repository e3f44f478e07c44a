// Crash-safe file output: write a sibling temp file, fsync it, then rename it over the target,
// so a reader (or a rerun after a crash) never sees a partially written result.
#pragma once
#include <cstdio>
#include <functional>
#include <string>

namespace saescale::io {

// Whether the rename may replace an existing file (a regular one only, either way).
enum class Replace { yes, no };

// Calls writer(f) on "<path>.tmp.<pid>" and renames it to path. Write errors (ferror) and
// exceptions from writer remove the temp file; failures throw saescale::Error, writer's own
// exceptions are rethrown unchanged. When the target exists and is not a regular file, or exists
// at the rename with Replace::no, the temp file is kept and the error names it.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& writer,
                       Replace replace = Replace::yes);

void write_text_atomic(const std::string& path, const std::string& text,
                       Replace replace = Replace::yes);

}  // namespace saescale::io
