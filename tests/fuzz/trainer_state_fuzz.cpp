// libFuzzer target: a checkpoint's trainer_state.json yields a Status or a TrainerState, never a
// crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)llmtrain::train::ParseTrainerState("fuzz/trainer_state.json", text);
  return 0;
}
