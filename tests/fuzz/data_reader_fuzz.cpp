// libFuzzer targets for the data readers, one per framing (built three times, see CMakeLists.txt):
//   data_jsonl_fuzz       the input as a JSONL file, format auto-detected;
//   data_json_array_fuzz  "[" + the input: the JSON array splitter, format auto-detected;
//   data_captions_fuzz    the input as a Flickr8K caption file.
// Every input yields a Status or a data set whose records all parse again, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/data/dataset.h"
#include "llmtrain/io/mapped_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  llmtrain::data::DatasetOptions options;
  options.max_record_bytes = 4096;
#if defined(LLMTRAIN_FUZZ_JSON_ARRAY)
  text = "[" + text;
#elif defined(LLMTRAIN_FUZZ_CAPTIONS)
  options.format = llmtrain::data::Format::kCaptions;
#endif
  auto file = llmtrain::io::MappedFile::FromBytes(
      "fuzz.data", absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  auto dataset = llmtrain::data::Dataset::FromFiles({file}, options);
  if (!dataset.ok()) return 0;
  for (int64_t i = 0; i < (*dataset)->size(); ++i) {
    if (!(*dataset)->Get(i).ok()) __builtin_trap();  // indexed as valid, so it must parse again
  }
  (void)(*dataset)->Summary();
  (void)(*dataset)->CheckBadFraction(0.01);
  return 0;
}
