// Chat templates of the supported families, written in C++ and checked against the real Jinja
// templates through transformers' apply_chat_template (tests/tokenizer):
//   - Gemma (2 and 3): "<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n…", a system
//     message folded into the first user turn, contents trimmed, roles that must alternate;
//   - Qwen2/2.5 (ChatML): "<|im_start|>system\n…<|im_end|>\n…", with Qwen's default system prompt
//     when the conversation has none, and tool results as <tool_response> blocks.
// Rendering also reports the byte spans of assistant output (the reply and its end-of-turn
// marker), which EncodeChat turns into the token mask that training puts the loss on.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto chat, tokenizer::ChatTemplate::ForTokenizer(*tok));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto messages, tokenizer::ParseMessages(R"([{"role":"user","content":"Hi"}])"));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto encoded, tokenizer::EncodeChat(*tok, *chat, messages, false));
#pragma once

#include <cstdint>
#include <memory>
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
};

/// `[{"role": …, "content": …}, …]` (content a string or a list of parts). Errors name the
/// message index and the field.
absl::StatusOr<std::vector<Message>> ParseMessages(absl::string_view json_text);

enum class ChatFormat { kGemma, kQwen };

/// A rendered conversation and where the assistant's output lies in it.
struct RenderedChat {
  std::string text;
  /// Byte ranges [first, second) of `text`: each assistant reply with its end-of-turn marker
  /// ("<end_of_turn>" / "<|im_end|>"), without the newline after it.
  std::vector<std::pair<size_t, size_t>> assistant_spans;
};

class ChatTemplate {
 public:
  /// `bos_token` is written first by the Gemma format (its template starts with {{ bos_token }}).
  ChatTemplate(ChatFormat format, std::string bos_token);
  /// The format of the tokenizer's family, recognized by its turn tokens (<start_of_turn> for
  /// Gemma, <|im_start|> for Qwen). Errors when the tokenizer has neither.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> ForTokenizer(const Tokenizer& tokenizer);
  /// "gemma" or "qwen" (also "gemma2", "gemma3", "qwen2", "qwen2.5", "chatml").
  static absl::StatusOr<ChatFormat> ParseFormat(absl::string_view name);

  /// Renders as apply_chat_template(messages, tokenize=False, add_generation_prompt=…) does with
  /// the family's real template; errors where the template raises (roles that do not alternate,
  /// an invalid content type), naming the message.
  absl::StatusOr<RenderedChat> Render(absl::Span<const Message> messages, bool add_generation_prompt) const;
  ChatFormat format() const { return format_; }

 private:
  ChatFormat format_;
  std::string bos_token_;
};

/// Token ids of a conversation and which of them are assistant output.
struct EncodedChat {
  std::vector<int32_t> ids;               ///< = apply_chat_template(messages, tokenize=True)
  std::vector<uint8_t> assistant_mask;    ///< 1 where an id's characters overlap an assistant span
};

/// Renders and tokenizes (no extra BOS: the template writes it), and marks the assistant ids.
absl::StatusOr<EncodedChat> EncodeChat(const Tokenizer& tokenizer, const ChatTemplate& chat,
                                       absl::Span<const Message> messages, bool add_generation_prompt);

}  // namespace llmtrain::tokenizer
