// Where a step's time goes, per operator, from ATen's RecordFunction callbacks:
// every aten op, every autograd node in backward, and llmtrain's own regions
// (RECORD_FUNCTION "llmtrain::…" in the library). Self time = the op's wall
// time minus that of the ops it called. Only the thread that started the
// profile is recorded, so the self times add up to its wall time; work that an
// op hands to the intra-op thread pool counts as that op's time.
#pragma once

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace llmtrain::bench {

class OpProfile {
 public:
  struct Row {
    std::string name;
    int64_t calls = 0;
    double self_s = 0.0;
    double total_s = 0.0;  ///< including the ops it called (nested calls of the
                           ///< same name count twice)
  };

  void Start() {
    State &s = state();
    s.rows.clear();
    s.stack.clear();
    s.thread = std::this_thread::get_id();
    handle_ = at::addGlobalCallback(at::RecordFunctionCallback(&OnStart, &OnEnd).needsInputs(false));
  }
  void Stop() { at::removeCallback(handle_); }

  /// Rows by self time, largest first.
  std::vector<Row> Rows() const {
    std::vector<Row> rows;
    for (const auto &[name, row] : state().rows) rows.push_back(row);
    std::sort(rows.begin(), rows.end(), [](const Row &a, const Row &b) { return a.self_s > b.self_s; });
    return rows;
  }

  /// Prints the top rows by self time with their share of the profiled total,
  /// then the time inside each llmtrain region (its ops included).
  void Print(const char *title, size_t top, double steps) const {
    const std::vector<Row> rows = Rows();
    double total = 0.0;
    for (const Row &r : rows) total += r.self_s;
    std::printf("%s: self time per step, %.3f s profiled per step\n", title, total / steps);
    for (size_t i = 0; i < rows.size() && i < top; ++i) {
      std::printf("  %8.1f ms %5.1f%% %6.0f calls  %s\n", 1e3 * rows[i].self_s / steps, 100.0 * rows[i].self_s / total,
                  static_cast<double>(rows[i].calls) / steps, rows[i].name.c_str());
    }
    std::printf("%s: llmtrain regions per step, their ops included\n", title);
    for (const Row &r : rows) {
      if (r.name.rfind("llmtrain::", 0) != 0) continue;
      std::printf("  %8.1f ms %5.1f%% %6.0f calls  %s\n", 1e3 * r.total_s / steps, 100.0 * r.total_s / total,
                  static_cast<double>(r.calls) / steps, r.name.c_str());
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Frame {
    Clock::time_point start;
    double children_s = 0.0;
  };
  struct State {
    std::thread::id thread;
    std::vector<Frame> stack;
    std::map<std::string, Row> rows;
  };
  static State &state() {
    static State s;
    return s;
  }
  static std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction &) {
    State &s = state();
    if (std::this_thread::get_id() == s.thread) s.stack.push_back({Clock::now(), 0.0});
    return nullptr;
  }
  static void OnEnd(const at::RecordFunction &fn, at::ObserverContext *) {
    State &s = state();
    if (std::this_thread::get_id() != s.thread || s.stack.empty()) return;
    const Frame frame = s.stack.back();
    s.stack.pop_back();
    const double total = std::chrono::duration<double>(Clock::now() - frame.start).count();
    if (!s.stack.empty()) s.stack.back().children_s += total;
    Row &row = s.rows[fn.name()];
    if (row.name.empty()) row.name = fn.name();
    ++row.calls;
    row.self_s += total - frame.children_s;
    row.total_s += total;
  }
  at::CallbackHandle handle_ = 0;
};

}  // namespace llmtrain::bench
