// data/: conversations with images through the VLM collator against transformers'
// Gemma3Processor and TRL's DataCollatorForVisionLanguageModeling (tests/reference/vlm_data_ref.py),
// with the real Gemma 3 tokenizer; Flickr8K folders, split lists and image paths that leave the
// data folder.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/io/safetensors.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

std::vector<int64_t> Int64s(const io::SafetensorsFile& file, const std::string& name) {
  const io::TensorInfo* t = file.Find(name);
  REQUIRE(t != nullptr);
  REQUIRE(t->dtype == Dtype::kI64);
  const auto bytes = file.Data(*t);
  std::vector<int64_t> out(bytes.size() / 8);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

std::vector<int64_t> Row(const std::vector<int64_t>& v, int64_t row, int64_t width) {
  return std::vector<int64_t>(v.begin() + row * width, v.begin() + (row + 1) * width);
}

TEST_CASE("vlm collator: ids, token_type_ids, pixel_values and TRL labels equal transformers'",
          "[data][collator][vlm][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  const std::string dir = testing::TempDir("vlm_collator");
  const int64_t size = 56, tokens = 16;
  const auto run = testing::RunReference("vlm_data_ref.py", {"make", dir, gguf, std::to_string(size), std::to_string(tokens)});
  REQUIRE(run.exit_code == 0);
  const nlohmann::json info = testing::LastJsonLine(run.out);
  auto ref = io::SafetensorsFile::Open(dir + "/ref.safetensors");
  REQUIRE(ref.ok());

  auto tok = tokenizer::Tokenizer::Load(gguf);
  REQUIRE(tok.ok());
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  REQUIRE(chat.ok());
  auto images = data::MakeImageOptions(tok->get(), tokens, size);
  REQUIRE(images.ok());
  CHECK(images->image_id == info["soft_token_id"].get<int>());  // added after the vocabulary, as HF adds it
  CHECK((*tok)->vocab_size() == info["vocab"].get<int>());
  auto dataset = data::Dataset::Open({dir + "/chats.jsonl"});
  REQUIRE(dataset.ok());
  REQUIRE((*dataset)->bad_records().empty());
  const int64_t n = info["chats"].get<int64_t>();
  REQUIRE((*dataset)->size() == n);

  for (const bool trl : {false, true}) {
    data::CollatorOptions options;
    options.max_length = 4096;
    options.images = *images;
    options.images.trl_labels = trl;
    data::Collator collator(**tok, chat->get(), options);
    std::vector<std::vector<data::TokenizedExample>> rows;
    for (int64_t i = 0; i < n; ++i) {
      INFO("chat " << i << (trl ? " (TRL labels)" : ""));
      auto example = (*dataset)->Get(i);
      REQUIRE(example.ok());
      auto tokenized = collator.Tokenize(*example);
      INFO((tokenized.ok() ? std::string("tokenized") : std::string(tokenized.status().message())));
      REQUIRE(tokenized.ok());
      const std::vector<int64_t> ids(tokenized->ids.begin(), tokenized->ids.end());
      CHECK(ids == Int64s(**ref, "ids." + std::to_string(i)));  // Gemma3Processor's tokens
      const data::Batch one = collator.Collate({{*tokenized}});
      CHECK(one.token_type_ids == Int64s(**ref, "types." + std::to_string(i)));
      CHECK(one.num_images == static_cast<int64_t>(example->images.size()));
      if (one.num_images > 0) {  // the processor's pixel_values, bit for bit
        const io::TensorInfo* pixels = (*ref)->Find("pixels." + std::to_string(i));
        REQUIRE(pixels != nullptr);
        REQUIRE(pixels->n_bytes() == one.pixel_values.size() * sizeof(float));
        CHECK(std::memcmp((*ref)->Data(*pixels).data(), one.pixel_values.data(), pixels->n_bytes()) == 0);
      }
      if (trl) {
        // TRL trains on every token but padding; position 0 is never a target after the shift.
        const std::vector<int64_t> want = Int64s(**ref, "trl_labels." + std::to_string(i));
        REQUIRE(one.labels.size() == want.size());
        CHECK(std::equal(one.labels.begin() + 1, one.labels.end(), want.begin() + 1));
      } else {
        // Ours: the assistant's tokens only, no image token ever.
        int64_t trained = 0;
        for (size_t t = 0; t < one.labels.size(); ++t) {
          if (one.labels[t] == data::kIgnoreIndex) continue;
          ++trained;
          CHECK(one.labels[t] != images->boi_id);
          CHECK(one.labels[t] != images->image_id);
          CHECK(one.labels[t] != images->eoi_id);
        }
        CHECK(trained > 0);
        CHECK(trained < static_cast<int64_t>(one.labels.size()) / 2);
      }
      rows.push_back({*std::move(tokenized)});
    }
    if (!trl) continue;
    // The whole set as one right-padded batch: TRL's batch exactly (padding masked).
    const data::Batch batch = collator.Collate(rows);
    const std::vector<int64_t> want_ids = Int64s(**ref, "batch_ids"), want_labels = Int64s(**ref, "batch_labels");
    const std::vector<int64_t> want_mask = Int64s(**ref, "batch_mask"), want_types = Int64s(**ref, "batch_types");
    REQUIRE(static_cast<int64_t>(want_ids.size()) == batch.batch_size * batch.seq_len);
    CHECK(batch.attention_mask == want_mask);
    CHECK(batch.token_type_ids == want_types);
    for (int64_t r = 0; r < batch.batch_size; ++r) {
      INFO("row " << r);
      const auto ids = Row(batch.input_ids, r, batch.seq_len), labels = Row(batch.labels, r, batch.seq_len);
      const auto mask = Row(batch.attention_mask, r, batch.seq_len);
      const auto want_row = Row(want_ids, r, batch.seq_len), want_label_row = Row(want_labels, r, batch.seq_len);
      for (int64_t t = 0; t < batch.seq_len; ++t) {
        if (mask[t] == 1) CHECK(ids[t] == want_row[t]);  // padding ids are masked on both sides
      }
      CHECK(std::equal(labels.begin() + 1, labels.end(), want_label_row.begin() + 1));
    }
    const io::TensorInfo* pixels = (*ref)->Find("batch_pixels");
    REQUIRE(pixels->n_bytes() == batch.pixel_values.size() * sizeof(float));
    CHECK(std::memcmp((*ref)->Data(*pixels).data(), batch.pixel_values.data(), pixels->n_bytes()) == 0);
  }

  // The CLI: `tokenize --chat --image-tokens` gives the processor's ids for the same chats, and
  // `preprocess-images` its pixel_values for chat 1's three images.
  std::string chats_in;
  {
    std::ifstream lines(dir + "/chats.jsonl");
    std::string line;
    while (std::getline(lines, line)) chats_in += nlohmann::json::parse(line)["messages"].dump() + "\n";
  }
  REQUIRE(WriteFileAtomically(dir + "/chats_cli.jsonl", chats_in).ok());
  const auto tokenized = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " tokenize --tokenizer " +
                                             testing::ShellQuote(gguf) + " --chat --image-tokens " +
                                             std::to_string(tokens) + " < " + testing::ShellQuote(dir + "/chats_cli.jsonl"));
  REQUIRE(tokenized.exit_code == 0);
  std::istringstream cli_lines(tokenized.out);
  std::string cli_line;
  for (int64_t i = 0; i < n && std::getline(cli_lines, cli_line); ++i) {
    INFO("tokenize chat " << i);
    CHECK(nlohmann::json::parse(cli_line).get<std::vector<int64_t>>() == Int64s(**ref, "ids." + std::to_string(i)));
  }
  auto chat1 = (*dataset)->Get(1);
  REQUIRE(chat1.ok());
  std::string command = testing::ShellQuote(testing::CliPath()) + " preprocess-images --size " + std::to_string(size) +
                        " --output " + testing::ShellQuote(dir + "/cli_pixels.safetensors");
  for (const std::string& image : chat1->images) command += " " + testing::ShellQuote(image);
  const auto preprocessed = testing::RunCommand(command + " 2>&1");
  INFO(preprocessed.out);
  REQUIRE(preprocessed.exit_code == 0);
  auto cli_pixels = io::SafetensorsFile::Open(dir + "/cli_pixels.safetensors");
  REQUIRE(cli_pixels.ok());
  const io::TensorInfo* mine = (*cli_pixels)->Find("pixel_values");
  const io::TensorInfo* want = (*ref)->Find("pixels.1");
  REQUIRE((mine != nullptr && want != nullptr));
  CHECK(mine->shape == want->shape);
  REQUIRE(mine->n_bytes() == want->n_bytes());
  CHECK(std::memcmp((*cli_pixels)->Data(*mine).data(), (*ref)->Data(*want).data(), want->n_bytes()) == 0);
}

void Write(const std::string& path, const std::string& text) { REQUIRE(WriteFileAtomically(path, text).ok()); }

TEST_CASE("flickr8k: a token file, an image folder and a split list; paths out of the folder refused",
          "[data][vlm]") {
  const std::string dir = testing::TempDir("flickr8k");
  std::filesystem::create_directories(dir + "/Images");
  std::filesystem::create_directories(dir + "/outside");
  // Any bytes: the dataset checks that images exist; decoding happens in the collator.
  for (const char* name : {"a.jpg", "b.jpg", "c.jpg"}) Write(dir + "/Images/" + name, "x");
  Write(dir + "/outside/secret.jpg", "x");
  std::filesystem::create_symlink(dir + "/outside/secret.jpg", dir + "/Images/link.jpg");
  Write(dir + "/Flickr8k.token.txt",
        "a.jpg#0\tA dog runs .\n"
        "a.jpg#1\tA brown dog runs on grass .\n"
        "b.jpg#0\tTwo children play .\n"
        "c.jpg#0\tA red car .\n"
        "missing.jpg#0\tNothing here .\n"
        "../outside/secret.jpg#0\tA way out .\n"
        "/etc/passwd#0\tAn absolute path .\n"
        "link.jpg#0\tA link out .\n");
  Write(dir + "/Flickr_8k.trainImages.txt", "a.jpg\nc.jpg\nmissing.jpg\n../outside/secret.jpg\n/etc/passwd\nlink.jpg\n");
  data::DatasetOptions options;
  options.image_dir = dir + "/Images";
  auto all = data::Dataset::Open({dir + "/Flickr8k.token.txt"}, options);
  REQUIRE(all.ok());
  CHECK((*all)->format() == data::Format::kCaptions);
  CHECK((*all)->size() == 4);
  REQUIRE((*all)->bad_records().size() == 4);
  const std::vector<std::pair<int64_t, std::string>> want = {
      {5, "image file not found"}, {6, "leaves the image folder"}, {7, "leaves the image folder"},
      {8, "leads out of the image folder"}};
  for (size_t i = 0; i < want.size(); ++i) {
    const data::BadRecord& bad = (*all)->bad_records()[i];
    INFO(bad.ToString());
    CHECK(bad.line == want[i].first);
    CHECK_THAT(bad.reason, Catch::Contains(want[i].second));
  }
  auto first = (*all)->Get(0);
  REQUIRE(first.ok());
  CHECK(first->images == std::vector<std::string>{dir + "/Images/a.jpg"});
  REQUIRE(first->messages.size() == 2);
  CHECK(first->messages[1].content == "A dog runs .");

  options.image_list = dir + "/Flickr_8k.trainImages.txt";
  auto train = data::Dataset::Open({dir + "/Flickr8k.token.txt"}, options);
  REQUIRE(train.ok());
  CHECK((*train)->size() == 3);      // a.jpg twice, c.jpg
  CHECK((*train)->excluded() == 1);  // b.jpg is not in the split
  CHECK((*train)->bad_records().size() == 4);
  CHECK_THAT((*train)->Summary(), Catch::Contains("1 not in the image list"));

  // `llmtrain data-check --images` decodes them: "x" is not an image, so every record with one is
  // bad, reported with file:line.
  const auto check = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " data-check --data " +
                                         testing::ShellQuote(dir + "/Flickr8k.token.txt") + " --images " +
                                         testing::ShellQuote(dir + "/Images") + " --json");
  CHECK(check.exit_code == 1);
  const nlohmann::json report = testing::LastJsonLine(check.out);
  CHECK(report["records_with_images"] == 4);
  CHECK(report["bad_images"] == 4);
  bool named = false;
  for (const auto& b : report["bad_records"]) {
    named = named || (b["line"] == 1 && b["reason"].get<std::string>().find("unknown signature") != std::string::npos);
  }
  CHECK(named);
}

}  // namespace
}  // namespace llmtrain
