// libFuzzer target: tokenizer.json text (and, after a NUL byte, a text to encode) yields a Status
// or a tokenizer whose Encode/Decode never crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string json = input.substr(0, nul);
  const std::string text = nul == std::string::npos ? "Hello  world\n\t<s> ünï 😀 \xff" : input.substr(nul + 1);
  auto tok = llmtrain::tokenizer::Tokenizer::FromJson("fuzz/tokenizer.json", json);
  if (!tok.ok()) return 0;
  for (bool special : {true, false}) {
    const auto ids = (*tok)->Encode(text, special);
    (void)(*tok)->Decode(ids, special);
  }
  return 0;
}
