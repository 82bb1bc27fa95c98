#include "llmtrain/tokenizer/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "io/json_checked.h"
#include "llmtrain/core/status.h"
#include "tokenizer/unicode.h"

namespace llmtrain::tokenizer {
namespace {

constexpr char kQwenDefaultSystem[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

absl::Status Bad(size_t index, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("messages[", index, "]: ", problem));
}

}  // namespace

absl::StatusOr<std::vector<Message>> ParseMessages(absl::string_view json_text) {
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json value, io::detail::ParseJson("messages", json_text));
  if (!value.is_array()) return absl::InvalidArgumentError("messages: expected a JSON array of messages");
  std::vector<Message> messages;
  for (size_t i = 0; i < value.size(); ++i) {
    const nlohmann::json& m = value[i];
    if (!m.is_object()) return Bad(i, "expected an object with \"role\" and \"content\"");
    Message message;
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return Bad(i, "\"role\" must be a string");
    message.role = role->get<std::string>();
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      return Bad(i, "\"tool_calls\" is not supported; put the call in the content");
    }
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) return Bad(i, "\"content\" is missing");
    if (content->is_string()) {
      message.content = content->get<std::string>();
    } else if (content->is_array()) {
      message.content_is_list = true;
      for (size_t k = 0; k < content->size(); ++k) {
        const nlohmann::json& part = (*content)[k];
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
          return Bad(i, absl::StrCat("content[", k, "] must be an object with a string \"type\""));
        }
        ContentPart p;
        p.type = part["type"].get<std::string>();
        if (p.type == "text") {
          if (!part.contains("text") || !part["text"].is_string()) {
            return Bad(i, absl::StrCat("content[", k, "] of type \"text\" needs a string \"text\""));
          }
          p.text = part["text"].get<std::string>();
        }
        message.parts.push_back(std::move(p));
      }
    } else {
      return Bad(i, absl::StrCat("\"content\" must be a string or a list of parts, found ", io::detail::Describe(*content)));
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

ChatTemplate::ChatTemplate(ChatFormat format, std::string bos_token)
    : format_(format), bos_token_(std::move(bos_token)) {}

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::ForTokenizer(const Tokenizer& tokenizer) {
  if (tokenizer.TokenToId("<start_of_turn>") && tokenizer.TokenToId("<end_of_turn>")) {
    const std::string bos = tokenizer.bos_id() ? tokenizer.IdToToken(*tokenizer.bos_id()) : "<bos>";
    return std::make_unique<ChatTemplate>(ChatFormat::kGemma, bos);
  }
  if (tokenizer.TokenToId("<|im_start|>") && tokenizer.TokenToId("<|im_end|>")) {
    return std::make_unique<ChatTemplate>(ChatFormat::kQwen, "");
  }
  return absl::InvalidArgumentError(
      "this tokenizer has no chat format we know (supported: Gemma's <start_of_turn>/<end_of_turn>, Qwen's "
      "<|im_start|>/<|im_end|>)");
}

absl::StatusOr<ChatFormat> ChatTemplate::ParseFormat(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "gemma" || n == "gemma2" || n == "gemma3") return ChatFormat::kGemma;
  if (n == "qwen" || n == "qwen2" || n == "qwen2.5" || n == "chatml") return ChatFormat::kQwen;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template \"", name, "\" (supported: gemma, gemma2, gemma3, qwen, qwen2, qwen2.5, chatml)"));
}

absl::StatusOr<RenderedChat> ChatTemplate::Render(absl::Span<const Message> messages,
                                                  bool add_generation_prompt) const {
  RenderedChat out;
  std::string& t = out.text;
  if (messages.empty()) return absl::InvalidArgumentError("messages: the conversation is empty");
  if (format_ == ChatFormat::kGemma) {
    t += bos_token_;
    std::string first_user_prefix;
    size_t first = 0;
    if (messages[0].role == "system") {
      if (!messages[0].content_is_list) {
        first_user_prefix = messages[0].content + "\n\n";
      } else {
        if (messages[0].parts.empty() || messages[0].parts[0].type != "text") {
          return Bad(0, "a system content list must start with a text part");
        }
        first_user_prefix = messages[0].parts[0].text + "\n\n";
      }
      first = 1;
    }
    for (size_t i = first; i < messages.size(); ++i) {
      const Message& m = messages[i];
      const size_t index0 = i - first;
      if ((m.role == "user") != (index0 % 2 == 0)) {
        return Bad(i, "Conversation roles must alternate user/assistant/user/assistant/...");
      }
      const bool assistant = m.role == "assistant";
      t += "<start_of_turn>";
      t += assistant ? "model" : m.role;
      t += "\n";
      if (index0 == 0) t += first_user_prefix;
      const size_t begin = t.size();
      if (!m.content_is_list) {
        absl::StrAppend(&t, detail::PythonStrip(m.content));
      } else {
        for (const ContentPart& part : m.parts) {
          if (part.type == "image") {
            t += "<start_of_image>";
          } else if (part.type == "text") {
            absl::StrAppend(&t, detail::PythonStrip(part.text));
          }
        }
      }
      t += "<end_of_turn>";
      if (assistant) out.assistant_spans.emplace_back(begin, t.size());
      t += "\n";
    }
    if (add_generation_prompt) t += "<start_of_turn>model\n";
    return out;
  }

  // Qwen (ChatML).
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].content_is_list) return Bad(i, "the Qwen template takes string contents only");
  }
  t += "<|im_start|>system\n";
  t += messages[0].role == "system" ? messages[0].content : kQwenDefaultSystem;
  t += "<|im_end|>\n";
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i > 0) || m.role == "assistant") {
      t += "<|im_start|>" + m.role + "\n";
      const size_t begin = t.size();
      t += m.content;
      t += "<|im_end|>";
      if (m.role == "assistant") out.assistant_spans.emplace_back(begin, t.size());
      t += "\n";
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") t += "<|im_start|>user";
      t += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (i + 1 == messages.size() || messages[i + 1].role != "tool") t += "<|im_end|>\n";
    }
  }
  if (add_generation_prompt) t += "<|im_start|>assistant\n";
  return out;
}

absl::StatusOr<EncodedChat> EncodeChat(const Tokenizer& tokenizer, const ChatTemplate& chat,
                                       absl::Span<const Message> messages, bool add_generation_prompt) {
  LLMTRAIN_ASSIGN_OR_RETURN(const RenderedChat rendered, chat.Render(messages, add_generation_prompt));
  EncodedChat out;
  std::vector<std::pair<uint32_t, uint32_t>> offsets;
  out.ids = tokenizer.EncodeWithOffsets(rendered.text, /*add_special_tokens=*/false, &offsets);
  out.assistant_mask.assign(out.ids.size(), 0);
  for (size_t i = 0; i < out.ids.size(); ++i) {
    for (const auto& [begin, end] : rendered.assistant_spans) {
      if (offsets[i].first < end && offsets[i].second > begin) {
        out.assistant_mask[i] = 1;
        break;
      }
    }
  }
  return out;
}

}  // namespace llmtrain::tokenizer
