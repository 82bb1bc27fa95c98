// libFuzzer target: run spec text (text proto or JSON) yields a Status or a spec, never a crash;
// a spec that parses is also filled and checked (its files and model paths are not on disk).
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/spec/run_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto spec = llmtrain::spec::ParseRunSpec("fuzz/run.textproto", text);
  if (spec.ok()) {
    llmtrain::spec::FillDefaults(&*spec);
    (void)llmtrain::spec::FindSpecErrors(*spec);
    (void)llmtrain::spec::SpecToText(*spec);
  }
  return 0;
}
