// libFuzzer target: adapter_config.json text yields a Status or a config, never a crash; a
// config that parses also runs its patterns on module names and writes itself back.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/lora/adapter_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = llmtrain::lora::ParseAdapterConfig("fuzz/adapter_config.json", text);
  if (config.ok()) {
    (void)llmtrain::lora::RankAndAlpha(*config, "model.layers.0.self_attn.q_proj");
    (void)llmtrain::lora::RankAndAlpha(*config, "model.layers.11.mlp.down_proj");
    (void)llmtrain::lora::AdapterConfigJson(*config);
  }
  return 0;
}
