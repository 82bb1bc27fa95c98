// libFuzzer target: config.json text (the checked JSON parser and the config rules) yields a
// Status or a config, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)llmtrain::io::ParseHfConfig("fuzz/config.json", text);
  return 0;
}
