// Hyperparameter sweeps (`llmtrain sweep`): trials of one run spec, each with `--set` overrides
// drawn from a search space (proto/llmtrain/sweep.proto), each run as its own training process
// with its share of the cores; successive halving stops weak trials at rungs of an eval metric.
//
// The trial protocol: what a sweep asks of the program it runs (and what
// examples/optuna_sweep.py drives by hand):
//   PROGRAM train --spec SPEC [--set F=V]... --set output.dir=TRIAL_DIR [--resume] [--stop-at-step N]
// trains to step N (then evaluates, writes a checkpoint and exits 0) or to the end (the final
// evaluation, checkpoint and TRIAL_DIR/adapter); --resume continues from the newest checkpoint in
// TRIAL_DIR. Every evaluation appends one line to TRIAL_DIR/metrics.jsonl:
//   {"type": "eval", "step": 20, "eval_loss": 2.41, "metrics": {"rougeL": 0.31, ...}, ...}
// and the trial's value at a rung is that line's metric at the rung's step.
//
// The sweep folder:
//   sweep.json          the state, rewritten atomically after every change: the base spec and
//                       space, every trial's overrides, where it stands and its values at rungs
//   sweep.lock          held while the sweep or any of its trials runs
//   trials/NNN/         each trial's run folder (its train.log is the process's output)
//   leaderboard.json    trials ranked, the best one's spec and adapter
//   leaderboard.html    the same, with every trial's eval curve on one plot
// Running the same command again resumes: finished trials are kept, trials that were running
// continue from their checkpoints (a sweep killed outright stops its trials with SIGTERM, which
// makes them checkpoint; the new sweep waits on sweep.lock until they have).
//
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::SweepSpace space, spec::LoadSweepSpace("space.textproto"));
//   spec::SweepOptions options{.spec_path = "run.textproto", .space = space, .output_dir = "sweeps/lr",
//                              .program = "build/bin/llmtrain"};
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::SweepResult result, spec::RunSweep(options));
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/run_spec.pb.h"  // generated from proto/llmtrain/run_spec.proto
#include "llmtrain/sweep.pb.h"     // generated from proto/llmtrain/sweep.proto

namespace llmtrain::spec {

/// Parses a space (text proto; unknown fields are errors with line and column). `where` prefixes
/// messages. Fills the defaults (method grid, parallel 1, metric eval_loss, reduction factor 2).
absl::StatusOr<SweepSpace> ParseSweepSpace(absl::string_view where, absl::string_view text);
/// Reads and parses a space file.
absl::StatusOr<SweepSpace> LoadSweepSpace(absl::string_view path);

/// The overrides of one trial: (field, value) in the space's param order.
using TrialParams = std::vector<std::pair<std::string, std::string>>;

/// Every problem of a space against the base spec (its --set overrides applied, not filled),
/// without loading a model: each "param[i].field" must be a field `--set` accepts and not
/// output.dir, have values or a non-empty range (min ≤ max, min > 0 with log, a whole number in
/// it with integer), and every value (each range's ends) must make a valid spec; grid needs
/// values; asha needs min_steps below training.max_steps, eval data and no param on max_steps; the
/// metric must be eval_loss or one of eval.metrics. InvalidArgument with one line per problem.
absl::Status ValidateSweep(const RunSpec& base, const SweepSpace& space);

/// The trials' overrides: the grid in order, or `trials` random draws from `seed` (values chosen
/// uniformly; ranges uniform or log-uniform, rounded with integer; printed with 6 significant
/// digits). Expects a validated space.
std::vector<TrialParams> SampleTrials(const SweepSpace& space);

/// Whether the space runs its grid (grid, or asha with values only and trials 0 or the grid's size).
bool SweepUsesGrid(const SweepSpace& space);

/// The rungs of successive halving: min_steps · factor^k below total_steps, then total_steps.
std::vector<int64_t> RungSteps(int64_t total_steps, int64_t min_steps, int reduction_factor);

/// True when `metric` ranks higher values first (every metric but eval_loss, loss, perplexity).
bool MetricMaximized(absl::string_view metric);

/// One rung's decision: the trials it keeps (best first) and the ones it stops (best first).
struct RungDecision {
  int64_t step = 0;
  std::vector<int> kept;
  std::vector<int> stopped;
};

/// Ranks the trials of a rung by value (a missing value, a failed trial, ranks last; ties by id)
/// and keeps the best max(1, floor(n / reduction_factor)).
RungDecision DecideRung(int64_t step, const std::vector<std::pair<int, std::optional<double>>>& values,
                        int reduction_factor, bool maximize);

/// Where a trial stands.
enum class TrialState {
  kPending,    ///< not started
  kRunning,    ///< started towards target_step (after a kill: resumed from its checkpoint)
  kWaiting,    ///< at its rung, waiting for the rung's other trials
  kStopped,    ///< stopped by a rung (its checkpoint stays)
  kCompleted,  ///< trained to the end; its adapter is TRIAL_DIR/adapter
  kFailed,     ///< its process failed (error says how)
};
absl::string_view TrialStateName(TrialState state);

struct SweepTrial {
  int id = 0;
  TrialParams params;
  TrialState state = TrialState::kPending;
  /// The step the trial runs to now; 0 = the end of its spec.
  int64_t target_step = 0;
  /// Its metric at each rung reached (and at the end), by step.
  std::vector<std::pair<int64_t, double>> values;
  int processes = 0;  ///< training processes started for it (a resume starts one more)
  std::string error;  ///< kFailed: the exit and the log's last lines
  std::string dir;    ///< its run folder, relative to the sweep folder ("trials/003")
};

struct SweepOptions {
  std::string spec_path;               ///< the base run spec
  std::vector<std::string> overrides;  ///< --set applied to it before every trial's own
  SweepSpace space;                    ///< as parsed (ParseSweepSpace), command-line changes applied
  std::string output_dir;              ///< the sweep folder
  /// The program that runs one trial by the protocol above (build/bin/llmtrain), and arguments
  /// put before "train".
  std::string program;
  std::vector<std::string> program_args;
  /// Threads of each trial (LLMTRAIN_NUM_THREADS and OMP_NUM_THREADS); 0 = cores / parallel.
  int threads_per_trial = 0;
  /// Set from a signal handler: running trials get SIGTERM (they checkpoint), the state is saved,
  /// and RunSweep returns a Cancelled status; running the sweep again continues it.
  std::atomic<bool>* stop = nullptr;
  bool progress = true;  ///< one line per trial event and a progress line on stderr
};

struct SweepResult {
  std::vector<SweepTrial> trials;
  std::vector<RungDecision> decisions;  ///< successive halving's, by rung
  std::optional<int> best;              ///< the completed trial with the best final value
  std::string leaderboard_json, leaderboard_html;  ///< paths
};

/// Runs (or resumes) the sweep to the end and writes the leaderboard. Refuses, before starting
/// anything, an invalid spec or space, and a sweep folder whose sweep.json holds another spec or
/// space. Trials that fail are recorded (kFailed) and ranked last; the sweep goes on without them.
absl::StatusOr<SweepResult> RunSweep(const SweepOptions& options);

/// The state of a sweep folder (its sweep.json), e.g. for a report of a sweep still running.
absl::StatusOr<SweepResult> ReadSweepState(absl::string_view output_dir);
/// Parses sweep.json text; errors name `where` and the field.
absl::StatusOr<SweepResult> ParseSweepState(absl::string_view where, absl::string_view text);

/// Writes output_dir/leaderboard.json and leaderboard.html from sweep.json and the trials'
/// metrics.jsonl; returns their paths in a SweepResult.
absl::StatusOr<SweepResult> WriteLeaderboard(absl::string_view output_dir);

}  // namespace llmtrain::spec
