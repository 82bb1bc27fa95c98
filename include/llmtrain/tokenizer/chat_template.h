// Chat templates of the supported families, written in C++ and checked against the real Jinja
// templates through transformers' apply_chat_template (tests/tokenizer):
//   - Gemma (2 and 3): "<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n…", a system
//     message folded into the first user turn, contents trimmed, roles that must alternate;
//   - Qwen2.5 (ChatML): "<|im_start|>system\n…<|im_end|>\n…", with Qwen2.5's default system prompt
//     when the conversation has none, and tool results as <tool_response> blocks;
//   - Qwen3 (ChatML): no default system prompt; assistant turns after the last user query carry a
//     "<think>\n…\n</think>\n\n" block (reasoning from the message's reasoning_content or from
//     "<think>…</think>" in its content; earlier turns lose their reasoning); enable_thinking=false
//     puts an empty think block after the generation prompt.
// Rendering also reports the byte spans of assistant output (the reply and its end-of-turn
// marker; for Qwen3 the think block too), which EncodeChat turns into the token mask that
// training puts the loss on.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto chat, tokenizer::ChatTemplate::ForTokenizer(*tok));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto messages, tokenizer::ParseMessages(R"([{"role":"user","content":"Hi"}])"));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto encoded, tokenizer::EncodeChat(*tok, *chat, messages, false));
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::tokenizer {

/// One part of a multimodal content list: {"type": "text", "text": …} or {"type": "image", …}.
struct ContentPart {
  std::string type;
  std::string text;  ///< for "text"
};

/// A chat message. `content` is a string, or a list of parts (content_is_list).
struct Message {
  std::string role;  ///< "system", "user", "assistant", "tool"
  std::string content;
  bool content_is_list = false;
  std::vector<ContentPart> parts;
  /// An assistant's reasoning given apart from its content (the "reasoning_content" key), which
  /// the Qwen3 template prefers over "<think>…</think>" in the content. Other formats ignore it,
  /// as their templates do.
  std::optional<std::string> reasoning_content;
};

/// `[{"role": …, "content": …, "reasoning_content": …}, …]` (content a string or a list of
/// parts; reasoning_content optional). Errors name the message index and the field.
absl::StatusOr<std::vector<Message>> ParseMessages(absl::string_view json_text);

enum class ChatFormat {
  kGemma,  ///< Gemma 2 and 3
  kQwen,   ///< Qwen2.5's ChatML, with its default system prompt
  kQwen3,  ///< Qwen3's ChatML: no default system prompt, <think> blocks, enable_thinking
};

/// The variables besides the messages that apply_chat_template passes to the templates.
struct ChatTemplateOptions {
  /// apply_chat_template(..., enable_thinking=False) when false: the Qwen3 generation prompt is
  /// followed by an empty "<think>\n\n</think>\n\n". The default (true) renders as when the
  /// variable is not given. Other formats ignore it.
  bool enable_thinking = true;
};

/// A rendered conversation and where the assistant's output lies in it.
struct RenderedChat {
  std::string text;
  /// Byte ranges [first, second) of `text`: each assistant reply with its end-of-turn marker
  /// ("<end_of_turn>" / "<|im_end|>"), without the newline after it. Qwen3: from after
  /// "<|im_start|>assistant\n", so its think block is included.
  std::vector<std::pair<size_t, size_t>> assistant_spans;
};

class ChatTemplate {
 public:
  /// `bos_token` is written first by the Gemma format (its template starts with {{ bos_token }}).
  ChatTemplate(ChatFormat format, std::string bos_token, ChatTemplateOptions options = {});
  /// The format of the tokenizer's family. Gemma is recognized by its turn tokens
  /// (<start_of_turn>, <end_of_turn>). A ChatML tokenizer (<|im_start|>, <|im_end|>) is told apart
  /// by its own chat template when it has one (tokenizer_config.json, chat_template.jinja or the
  /// GGUF's tokenizer.chat_template): Qwen2.5's contains its default system prompt, Qwen3's reads
  /// reasoning_content and enable_thinking. Without a template, by the vocabulary: Qwen3 adds
  /// <think> and </think>, Qwen2.5 does not. Errors when the tokenizer has no turn tokens we know,
  /// or a ChatML template that is neither Qwen2.5's nor Qwen3's (e.g. Qwen2's, QwQ's,
  /// Qwen3-2507's), which we would render wrongly.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> ForTokenizer(const Tokenizer& tokenizer,
                                                                    const ChatTemplateOptions& options = {});
  /// "gemma", "gemma2", "gemma3" (Gemma); "qwen", "qwen2", "qwen2.5", "chatml" (Qwen2.5);
  /// "qwen3". Case-insensitive; an unknown name is an error that lists the known ones.
  static absl::StatusOr<ChatFormat> ParseFormat(absl::string_view name);

  /// Renders as apply_chat_template(messages, tokenize=False, add_generation_prompt=…) does with
  /// the family's real template; errors where the template raises (roles that do not alternate,
  /// an invalid content type), naming the message.
  absl::StatusOr<RenderedChat> Render(absl::Span<const Message> messages, bool add_generation_prompt) const;
  ChatFormat format() const { return format_; }
  const ChatTemplateOptions& options() const { return options_; }

 private:
  ChatFormat format_;
  std::string bos_token_;
  ChatTemplateOptions options_;
};

/// Token ids of a conversation and which of them are assistant output.
struct EncodedChat {
  std::vector<int32_t> ids;               ///< = apply_chat_template(messages, tokenize=True)
  std::vector<uint8_t> assistant_mask;    ///< 1 where an id's characters overlap an assistant span
};

/// Renders and tokenizes (no extra BOS: the template writes it), and marks the assistant ids.
absl::StatusOr<EncodedChat> EncodeChat(const Tokenizer& tokenizer, const ChatTemplate& chat,
                                       absl::Span<const Message> messages, bool add_generation_prompt);
/// Tokenizes a rendered conversation (no extra BOS) and marks the assistant ids.
EncodedChat EncodeRendered(const Tokenizer& tokenizer, const RenderedChat& rendered);
/// Replaces every `placeholder` in the rendered text with `expansion`, moving the assistant spans
/// with the text: what Gemma3Processor does to "<start_of_image>" before it tokenizes (so the
/// newlines of the expansion merge with their neighbours as they do there). Returns how many
/// placeholders it replaced.
int ExpandPlaceholders(RenderedChat* rendered, absl::string_view placeholder, absl::string_view expansion);

}  // namespace llmtrain::tokenizer
