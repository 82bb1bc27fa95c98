// The one Catch2 main, compiled once for every test binary. After the run it prints one closing
// line with the test cases that skipped (testing::Skip): Catch2 v2 has no skipped state, so a
// skipped test case counts as passed in its summary and in ctest's, and this line says which
// ones did not really run. scripts/test adds these lines up from ctest's log.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "testing/reference.h"

int main(int argc, char* argv[]) {
  Catch::Session session;
  const int result = session.run(argc, argv);
  std::string binary = argc > 0 ? argv[0] : "test";
  const size_t slash = binary.rfind('/');
  if (slash != std::string::npos) binary = binary.substr(slash + 1);
  std::fflush(stdout);
  std::printf("%s\n", llmtrain::testing::detail::SkipSummary(binary).c_str());
  std::fflush(stdout);
  return result;
}
