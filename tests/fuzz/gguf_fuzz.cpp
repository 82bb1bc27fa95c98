// libFuzzer target: any byte string given to the GGUF parser yields a Status or a file whose
// config and tokenizer can be derived and whose (small) tensors dequantize, never a crash.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = llmtrain::io::GgufFile::Parse(llmtrain::io::MappedFile::FromBytes(
      "fuzz.gguf", absl::Span<const uint8_t>(data, size)));
  if (!file.ok()) return 0;
  (void)llmtrain::io::HfConfigFromGguf(**file);
  if (auto tok = llmtrain::tokenizer::Tokenizer::FromGguf(**file); tok.ok()) {
    (void)(*tok)->Decode((*tok)->Encode("a b  c <eos>\xc3", true));
  }
  for (const auto& t : (*file)->tensors()) {
    if (!llmtrain::io::CanDequantize(t.type) || t.n_elems() > (1 << 20)) continue;
    std::vector<float> out(static_cast<size_t>(t.n_elems()));
    (void)llmtrain::io::DequantizeTensor(**file, t, absl::MakeSpan(out));
  }
  return 0;
}
