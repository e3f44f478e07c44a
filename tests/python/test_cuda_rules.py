"""tools/cuda_rules.py: the CUDA rules that a host compiler does not enforce.

Each rule is shown to catch a planted violation, both in a small file and planted into a copy of
the real tree (the very mistakes nvcc found the first time the project was built with CUDA), and
to pass the tree as it is.
"""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "cuda_rules.py"
spec = importlib.util.spec_from_file_location("cuda_rules", TOOL)
cuda_rules = importlib.util.module_from_spec(spec)
sys.modules["cuda_rules"] = cuda_rules
spec.loader.exec_module(cuda_rules)

TYPES = """
#pragma once
#include <Kokkos_Core.hpp>
using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using Vector = Kokkos::View<float*, Kokkos::LayoutRight, MemSpace>;
using Matrix = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>;
using HostVector = Kokkos::View<float*, Kokkos::HostSpace>;
using Counter = Kokkos::View<long, MemSpace>;
struct Rows {
  Vector values;
  Counter longest;  // device
};
"""


def check_snippet(tmp_path, code, name="snippet.cpp"):
    (tmp_path / "types.hpp").write_text(TYPES)
    (tmp_path / name).write_text('#include "types.hpp"\n' + code)
    violations, _ = cuda_rules.check(tmp_path, [tmp_path])
    return [v.rule for v in violations]


# ---- each rule on a small planted violation, and its correct form ---------------------------------

def test_lambda_in_private_member_function(tmp_path):
    bad = """
class Trainer {
 public:
  void run() { step(); }
 private:
  void step() {
    Vector v("v", 4);
    Kokkos::parallel_for("k", 4, KOKKOS_LAMBDA(int i) { v(i) = 1; });
  }
};
"""
    assert check_snippet(tmp_path, bad) == ["lambda-access"]
    assert check_snippet(tmp_path, bad.replace(" private:", " public:")) == []


def test_lambda_in_private_member_defined_out_of_class(tmp_path):
    header = """
class Trainer {
 public:
  void run();
 protected:
  double dead_fraction() const;
};
"""
    source = """
double Trainer::dead_fraction() const {
  long n = 0;
  Vector flags("f", 4);
  Kokkos::parallel_reduce("k", 4, KOKKOS_LAMBDA(int i, long& acc) { acc += flags(i) != 0; }, n);
  return n;
}
void Trainer::run() {
  Vector v("v", 4);
  Kokkos::parallel_for("k", 4, KOKKOS_LAMBDA(int i) { v(i) = 1; });  // public: fine
}
"""
    (tmp_path / "trainer.hpp").write_text(header)
    rules = check_snippet(tmp_path, '#include "trainer.hpp"\n' + source)
    assert rules == ["lambda-access"]


def test_lambda_inside_a_host_lambda_of_a_private_member(tmp_path):
    bad = """
class Trainer {
  void step() {
    run_timed([&] {
      Vector v("v", 4);
      Kokkos::parallel_for("k", 4, KOKKOS_LAMBDA(int i) { v(i) = 1; });
    });
  }
};
"""
    assert check_snippet(tmp_path, bad) == ["lambda-access"]  # class: private by default
    assert check_snippet(tmp_path, bad.replace("class Trainer", "struct Trainer")) == []


def test_lambda_in_constructor_and_destructor(tmp_path):
    bad = """
struct Model {
  Vector v;
  Model() : v("v", 4) {
    auto w = v;
    Kokkos::parallel_for("k", 4, KOKKOS_LAMBDA(int i) { w(i) = 0; });
  }
};
struct Buffer {
  Vector v;
  ~Buffer();
};
Buffer::~Buffer() {
  auto w = v;
  Kokkos::parallel_for("k", 4, KOKKOS_LAMBDA(int i) { w(i) = 0; });
}
"""
    assert check_snippet(tmp_path, bad) == ["lambda-constructor", "lambda-constructor"]


def test_reducer_over_a_device_view_needs_its_memory_space(tmp_path):
    bad = """
void longest(const Rows& rows, const Vector& count) {
  Kokkos::parallel_reduce("k", 4, KOKKOS_LAMBDA(int b, long& n) { n = n > count(b) ? n : count(b); },
                          Kokkos::Max<long>(rows.longest));
}
"""
    assert check_snippet(tmp_path, bad) == ["reducer-space"]
    assert check_snippet(tmp_path, bad.replace("Max<long>", "Max<long, MemSpace>")) == []
    local_device = """
void f(const Vector& v) {
  Counter best("best");
  Kokkos::parallel_reduce("k", 4, KOKKOS_LAMBDA(int i, float& m) { m = v(i); },
                          Kokkos::Min<float>(best));
}
"""
    assert check_snippet(tmp_path, local_device) == ["reducer-space"]
    host_scalar = """
float f(const Vector& v) {
  float smallest = 0;
  Kokkos::parallel_reduce("k", 4, KOKKOS_LAMBDA(int i, float& m) { m = v(i); },
                          Kokkos::Min<float>(smallest));
  return smallest;
}
"""
    assert check_snippet(tmp_path, host_scalar) == []


def test_asynchronous_deep_copy_to_host_needs_a_fence(tmp_path):
    bad = """
float f(const Vector& v) {
  auto h = Kokkos::create_mirror_view(Kokkos::HostSpace(), v);
  Kokkos::deep_copy(ExecSpace(), h, v);
  return h(0);
}
"""
    assert check_snippet(tmp_path, bad) == ["deep-copy-async"]
    good = bad.replace("  return h(0);", "  ExecSpace().fence();\n  return h(0);")
    assert check_snippet(tmp_path, good) == []
    to_device = """
void f(const Vector& v) {
  auto h = Kokkos::create_mirror_view(Kokkos::HostSpace(), v);
  Kokkos::deep_copy(ExecSpace(), v, h);
}
"""
    assert check_snippet(tmp_path, to_device) == []


def test_strided_subview_across_memory_spaces(tmp_path):
    bad = """
void f(const Matrix& m, const HostVector& column) {
  Kokkos::deep_copy(column, Kokkos::subview(m, Kokkos::ALL, 3));
}
"""
    assert check_snippet(tmp_path, bad) == ["deep-copy-strided"]
    row = bad.replace("Kokkos::subview(m, Kokkos::ALL, 3)", "Kokkos::subview(m, 3, Kokkos::ALL)")
    assert check_snippet(tmp_path, row) == []
    same_space = """
void f(const Matrix& m, const Vector& column) {
  Kokkos::deep_copy(column, Kokkos::subview(m, Kokkos::ALL, 3));
}
"""
    assert check_snippet(tmp_path, same_space) == []


def test_host_only_source_must_not_reach_kokkos(tmp_path):
    (tmp_path / "CMakeLists.txt").write_text(
        "set(SAESCALE_HOST_SOURCES\n    src/config.cpp src/io/npy.cpp)\n")
    (tmp_path / "src" / "io").mkdir(parents=True)
    (tmp_path / "src" / "config.cpp").write_text('#include "config.hpp"\n')
    (tmp_path / "src" / "config.hpp").write_text("#include <string>\n")
    (tmp_path / "src" / "io" / "npy.cpp").write_text('#include "io/npy.hpp"\n')
    (tmp_path / "src" / "io" / "npy.hpp").write_text('#include "kernels/types.hpp"\n')
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "types.hpp").write_text("#include <Kokkos_Core.hpp>\n")
    violations = cuda_rules.rule_host_only(tmp_path)
    assert [(v.path, v.rule) for v in violations] == [("src/io/npy.cpp", "host-only-kokkos")]
    assert "kernels/types.hpp -> Kokkos_Core.hpp" in violations[0].message


# ---- the real tree: clean as it is, and each rule catches a violation planted into it -------------

def run_tool(root):
    return subprocess.run([sys.executable, str(TOOL), "--root", str(root)], capture_output=True,
                          text=True)


def test_the_tree_is_clean():
    done = run_tool(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 violation(s)" in done.stdout


@pytest.fixture
def tree(tmp_path):
    for part in ("kernels", "src", "tests", "benchmarks"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "CMakeLists.txt", tmp_path)
    return tmp_path


def plant(path, old, new):
    text = path.read_text()
    assert old in text, f"{path}: the text to mutate is gone; update this test"
    path.write_text(text.replace(old, new, 1))


def test_planted_reducer_without_space_in_sparse_rows(tree):
    plant(tree / "kernels" / "sparse.hpp", "Kokkos::Max<int64_t, MemSpace>(rows.longest)",
          "Kokkos::Max<int64_t>(rows.longest)")
    done = run_tool(tree)
    assert done.returncode == 1
    assert "kernels/sparse.hpp" in done.stdout and "reducer-space" in done.stdout


def test_planted_lambda_in_a_private_trainer_function(tree):
    plant(tree / "src" / "trainer.cpp",
          'kernels::count_nonzero("saescale::statistics::dead_fraction", model_->buffers().dead);',
          """0;
  auto flags = model_->buffers().dead;
  Kokkos::parallel_reduce(
      "saescale::statistics::dead_fraction", Kokkos::RangePolicy<ExecSpace>(0, flags.extent(0)),
      KOKKOS_LAMBDA(int64_t i, int64_t & acc) { acc += flags(i) != 0; }, dead);""")
    done = run_tool(tree)
    assert done.returncode == 1
    assert "lambda-access" in done.stdout and "Trainer::dead_fraction" in done.stdout


def test_planted_lambda_in_a_constructor(tree):
    plant(tree / "src" / "trainer.cpp", "  local_batch_ = cfg.batch_size / dp;",
          """  local_batch_ = cfg.batch_size / dp;
  Vector probe("probe", 1);
  Kokkos::parallel_for("probe", 1, KOKKOS_LAMBDA(int64_t i) { probe(i) = 0; });""")
    done = run_tool(tree)
    assert done.returncode == 1
    assert "lambda-constructor" in done.stdout and "Trainer::Trainer" in done.stdout


def test_planted_kokkos_include_in_a_host_only_source(tree):
    plant(tree / "src" / "config.cpp", '#include "config.hpp"',
          '#include "config.hpp"\n#include "kernels/types.hpp"')
    done = run_tool(tree)
    assert done.returncode == 1
    assert "host-only-kokkos" in done.stdout and "src/config.cpp" in done.stdout
