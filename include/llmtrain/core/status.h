// Status helpers over absl::Status / absl::StatusOr.
//
// Every function that reads user input (files, specs, data, the command line) returns a Status
// whose message says where (file, field, record), what was expected and what was found. These
// macros keep the plumbing short:
//
//   absl::StatusOr<Header> ReadHeader(absl::string_view path) {
//     LLMTRAIN_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
//     LLMTRAIN_RETURN_IF_ERROR(CheckMagic(path, bytes));
//     return ParseHeader(path, bytes);
//   }
#pragma once

#include "absl/strings/string_view.h"
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmtrain {

/// Returns `status` with `context` and ": " put in front of its message, keeping the code.
/// An OK status is returned unchanged. Used as a Status rises through the layers:
/// `loading adapter out/adapter_model.safetensors: tensor "x": ...`.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

/// Converts the exception that is being handled (inside a `catch (...)` block) into a Status:
/// c10::Error and std::exception keep their message, with `context` in front. Used at component
/// boundaries that call LibTorch and must return a Status.
absl::Status StatusFromCurrentException(absl::string_view context);

}  // namespace llmtrain

#define LLMTRAIN_STATUS_CONCAT_INNER_(a, b) a##b
#define LLMTRAIN_STATUS_CONCAT_(a, b) LLMTRAIN_STATUS_CONCAT_INNER_(a, b)

/// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define LLMTRAIN_RETURN_IF_ERROR(expr)                 \
  do {                                                 \
    ::absl::Status llmtrain_status_ = (expr);          \
    if (!llmtrain_status_.ok()) return llmtrain_status_; \
  } while (0)

/// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else moves the value
/// into `lhs`, which may be a declaration (`auto x`) or an existing variable.
#define LLMTRAIN_ASSIGN_OR_RETURN(lhs, rexpr) \
  LLMTRAIN_ASSIGN_OR_RETURN_IMPL_(LLMTRAIN_STATUS_CONCAT_(llmtrain_statusor_, __LINE__), lhs, rexpr)

#define LLMTRAIN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();    \
  lhs = *std::move(statusor)
