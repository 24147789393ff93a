"""Prints the figures benches/generator.sh compares from a GuideLLM JSON report:
guidellm_summary.py REPORT LABEL"""
import json
import sys

report, label = json.load(open(sys.argv[1])), sys.argv[2]
m = report["benchmarks"][0]["metrics"]
ok = lambda name: m[name]["successful"]
itl = ok("inter_token_latency_ms")["median"]
print(f"{label}: {ok('request_latency')['count']} requests; TTFT p50 {ok('time_to_first_token_ms')['median']:.2f} ms, "
      f"ITL p50 {itl:.3f} ms/token, pace p50 {1000 / itl:.2f} tokens/s, "
      f"output tokens p50 {ok('output_token_count')['median']:.0f}")
