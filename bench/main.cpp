// SPDX-License-Identifier: MIT
// headroom_bench: Google Benchmark's main, plus a closing table of each kernel's speedup over its
// naive baseline (BM_<Op>Naive/<rest> against BM_<Op>/<rest>) from the medians of this run.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace {

/// The console reporter that also remembers each run's real time and prints the ratios at the end.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Iteration && run.repetitions > 1) continue;  // keep aggregates
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      std::string name = run.run_name.str();
      times_[name] = run.GetAdjustedRealTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    bool header = false;
    for (const auto& [name, time] : times_) {
      const auto slash = name.find('/');
      const std::string op = name.substr(0, slash);
      if (op.size() < 5 || op.compare(op.size() - 5, 5, "Naive") != 0) continue;
      const std::string fast = op.substr(0, op.size() - 5) + name.substr(slash);
      const auto it = times_.find(fast);
      if (it == times_.end()) continue;
      if (!header) {
        std::printf("\n%-40s %12s %12s %8s\n", "kernel vs naive baseline", "kernel", "naive",
                    "speedup");
        header = true;
      }
      std::printf("%-40s %12.3f %12.3f %7.2fx\n", fast.c_str(), it->second, time,
                  time / it->second);
    }
  }

 private:
  std::map<std::string, double> times_;
};

/// The processor's name as the kernel reports it (Linux /proc/cpuinfo), for the JSON context: the
/// charts and tables say what they were measured on, and hosts of one cloud kind differ.
std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
  }
  return "unknown CPU";
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("cpu_model", cpu_model());
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
