// TensorBoard event files (train/tensorboard.h).
#include "llmtrain/train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/tb_event.pb.h"

namespace llmtrain::train {
namespace {

std::array<uint32_t, 256> Crc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli
    table[i] = c;
  }
  return table;
}

// TFRecord's masking: rotate right by 15 and add a constant.
uint32_t Masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t Crc32c(absl::string_view data) {
  static const std::array<uint32_t, 256> table = Crc32cTable();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = table[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(absl::string_view dir) {
  if (absl::Status s = MakeDirectories(dir); !s.ok()) return s;
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const std::string path = absl::StrCat(dir, "/events.out.tfevents.", static_cast<int64_t>(Now()), ".", host, ".", getpid());
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return absl::InternalError(absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(file, path));
  tb::Event event;
  event.set_wall_time(Now());
  event.set_file_version("brain.Event:2");
  if (absl::Status s = writer->WriteRecord(event.SerializeAsString()); !s.ok()) return s;
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status TensorBoardWriter::WriteRecord(const std::string& data) {
  const uint64_t length = data.size();
  char header[12];
  std::memcpy(header, &length, 8);  // little-endian, as every supported host is
  const uint32_t length_crc = Masked(Crc32c(absl::string_view(header, 8)));
  std::memcpy(header + 8, &length_crc, 4);
  const uint32_t data_crc = Masked(Crc32c(data));
  if (std::fwrite(header, 1, 12, file_) != 12 || std::fwrite(data.data(), 1, data.size(), file_) != data.size() ||
      std::fwrite(&data_crc, 1, 4, file_) != 4 || std::fflush(file_) != 0) {
    return absl::InternalError(absl::StrCat(path_, ": write failed"));
  }
  return absl::OkStatus();
}

absl::Status TensorBoardWriter::AddScalar(absl::string_view tag, double value, int64_t step) {
  tb::Event event;
  event.set_wall_time(Now());
  event.set_step(step);
  tb::SummaryValue* v = event.mutable_summary()->add_value();
  v->set_tag(std::string(tag));
  v->set_simple_value(static_cast<float>(value));
  return WriteRecord(event.SerializeAsString());
}

}  // namespace llmtrain::train
