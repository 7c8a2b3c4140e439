// The ddp baseline's compiled communication hook (built by baselines/ddp_hook.py).
//
// It does what baselines/ddp.py's Python hook does (PyTorch's allreduce_hook, or with a 16-bit
// dtype its fp16/bf16_compress_hook: cast, divide by the world size, all-reduce, cast back
// into the bucket) on the same process group, and keeps, per bucket, the bytes and the times
// the transport needs: when the all-reduce was issued, when issuing returned and when DDP's
// wait for it ended. The transport takes them (Transport.count_outside) when anything reads its
// counters or trace or notes an op of its own, so the bytes, messages and trace are the Python
// hook's, without Python in DDP's backward pass (a Python hook costs a small model's step
// 4-8% on 2 vCPUs: tests/benchmarks/test_bench_ddp.py) and without a Python call per step:
// the loop's per-step row reads the running totals in `shared`, here, through a memoryview.
// While the rank waits, it is marked as communicating for the launcher's hang blame, as the
// transport marks its own waits.
#include <torch/extension.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <time.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Python's time.perf_counter clock on Linux, so the records line up with the transport's.
double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// One all-reduce the hook issued, until the transport takes it.
struct AllReduce {
  double bytes;
  double issued;  // when the hook issued it
  double returned;  // when issuing returned
  double ended = 0.0;  // when DDP's wait for it ended (never before the step's last issue)
  double step;  // the loop's step then
  bool opens;  // the first of a backward pass's all-reduces
};

// Slots of Records::shared, the memory the transport reads and writes without a call
// (suite.transport.OUTSIDE_SLOTS): the loop's step, written by the transport, then the running
// totals of the all-reduces not yet taken. Wire bytes are NaN while one of them has a size
// whose wire bytes the transport has not taught (learn_wire): it then takes them.
enum Slot { kStep, kPayload, kCalls, kWire, kSeconds, kSlots };

// What the hook saw since the last take().
struct Records {
  std::vector<AllReduce> ops;
  std::vector<at::Tensor> into;  // a 16-bit all-reduce's bucket, to copy the result into
  size_t waited = 0;  // all-reduces whose wait has ended
  double began = 0.0;  // when the next wait began: the last issue's return, then each wait's end
  double shared[kSlots] = {-1.0, 0.0, 0.0, 0.0, 0.0};
  std::unordered_map<int64_t, double> wire;  // this rank's wire bytes, by payload bytes
  bool dry = false;  // pass buckets through untouched (baselines/ddp.py: settle_buckets)
  // the launcher's mark that this rank waits on its peers (suite.launcher.communicating_flag),
  // set from the first issue to the last wait's end, so a hang meanwhile blames the peer
  volatile int8_t* communicating = nullptr;
};

// This rank's wire bytes in an all-reduce of `bytes` payload bytes; NaN until learn_wire.
double wire_of(const Records& r, double bytes) {
  const auto known = r.wire.find(static_cast<int64_t>(bytes));
  return known == r.wire.end() ? kNaN : known->second;
}

// The running wire bytes of the all-reduces not yet taken.
void total_wire(Records& r) {
  double wire = 0.0;
  for (const AllReduce& op : r.ops) {
    wire += wire_of(r, op.bytes);
  }
  r.shared[kWire] = wire;
}

class CountingHook : public c10d::CommHookInterface {
 public:
  CountingHook(
      c10::intrusive_ptr<c10d::ProcessGroup> group,
      std::shared_ptr<Records> records,
      int64_t world_size,
      std::optional<at::ScalarType> dtype)
      : group_(std::move(group)),
        records_(std::move(records)),
        world_size_(world_size),
        dtype_(dtype) {}

  c10::intrusive_ptr<c10::ivalue::Future> runHook(c10d::GradBucket& bucket) override {
    at::Tensor& buffer = bucket.getBufferRef();
    if (records_->dry) {
      auto done = c10::make_intrusive<c10::ivalue::Future>(
          c10::ListType::create(c10::TensorType::get()));
      done->markCompleted(c10::IValue(std::vector<at::Tensor>{buffer}));
      return done;
    }
    if (records_->communicating) {
      *records_->communicating = 1;
    }
    Records& r = *records_;
    const bool opens = r.waited == r.ops.size();  // every earlier all-reduce was waited for
    const double t0 = now();
    at::Tensor x = dtype_ ? buffer.to(*dtype_).div_(world_size_) : buffer.div_(world_size_);
    std::vector<at::Tensor> tensors{x};
    auto future = group_->allreduce(tensors)->getFuture();
    const double t1 = now();
    const double bytes = static_cast<double>(x.numel() * x.element_size());
    r.ops.push_back({bytes, t0, t1, 0.0, r.shared[kStep], opens});
    r.into.push_back(dtype_ ? buffer : at::Tensor());
    r.shared[kPayload] += bytes;
    r.shared[kCalls] += 1;
    r.shared[kWire] += wire_of(r, bytes);
    r.shared[kSeconds] += t1 - t0;
    r.began = t1;  // DDP waits for the first once all are issued
    return future;
  }

  // DDP calls this for each bucket, in order, right after waiting for its future.
  at::Tensor parseHookResult(const c10::IValue& result) override {
    at::Tensor x = c10d::detail::parseCppCommHookResult(result);
    Records& r = *records_;
    if (r.dry || r.waited >= r.into.size()) {
      return x;
    }
    AllReduce& op = r.ops[r.waited];
    op.ended = std::max(now(), r.began);
    r.shared[kSeconds] += op.ended - r.began;
    r.began = op.ended;
    at::Tensor into = r.into[r.waited];
    r.into[r.waited] = at::Tensor();
    ++r.waited;
    if (r.communicating && r.waited == r.into.size()) {  // the step's last wait ended
      *r.communicating = 0;
    }
    return into.defined() ? into.copy_(x) : x;
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  std::shared_ptr<Records> records_;
  int64_t world_size_;
  std::optional<at::ScalarType> dtype_;
};

// Register the hook on a DistributedDataParallel's reducer (ddp.reducer); `compression` is
// "none", "fp16" or "bf16" (DDPConfig.compression); `communicating` the launcher's flag's
// address (0: none).
std::shared_ptr<Records> install(
    py::object reducer,
    py::object group,
    int64_t world_size,
    const std::string& compression,
    int64_t communicating) {
  std::optional<at::ScalarType> dtype;
  if (compression == "fp16") {
    dtype = at::kHalf;
  } else if (compression == "bf16") {
    dtype = at::kBFloat16;
  } else {
    TORCH_CHECK(compression == "none", "unknown compression ", compression);
  }
  auto records = std::make_shared<Records>();
  records->communicating = reinterpret_cast<volatile int8_t*>(communicating);
  reducer.cast<c10d::Reducer&>().register_comm_hook(std::make_unique<CountingHook>(
      group.cast<c10::intrusive_ptr<c10d::ProcessGroup>>(), records, world_size, dtype));
  return records;
}

// The backward passes' all-reduces waited for since the last take, for the transport
// (suite.transport.Transport.count_outside, which documents the arguments): their payload bytes
// in issue order, the seconds this rank spent issuing them and waiting for them, their trace
// records packed as suite.trace.Recorder holds them (trace.FIELDS, kWidth doubles each: per
// backward pass, every issue, then every wait) or nothing where `trace` is off, and when the
// last of them ended. They are then forgotten, and the running totals in `shared` go down by
// theirs. DDP waits for a backward pass's all-reduces in issue order once all are issued, so
// each wait began when the previous one ended or, for the first, when the last issue returned.
py::tuple take(
    Records& r,
    int64_t kind,  // integers, as Python holds them: a double parameter given an int
    int64_t wait_kind,  // takes pybind's second, converting pass over the arguments
    int64_t group,
    int64_t channel,
    int64_t first,
    double last_end,
    bool trace) {
  constexpr size_t kWidth = 12;  // trace.WIDTH
  size_t n = r.waited;  // whole backward passes only (one cut short leaves its waits behind)
  while (n > 0 && n < r.ops.size() && !r.ops[n].opens) {
    --n;
  }
  py::tuple sizes(n);
  std::string rows(trace ? 2 * n * kWidth * sizeof(double) : 0, '\0');
  double* out = reinterpret_cast<double*>(rows.data());
  double seconds = 0.0, payload = 0.0;
  double last = last_end;
  for (size_t begin = 0, end; begin < n; begin = end) {  // a backward pass: [begin, end)
    for (end = begin + 1; end < n && !r.ops[end].opens; ++end) {
    }
    for (size_t i = begin; i < end; ++i) {  // its issues
      const AllReduce& op = r.ops[i];
      sizes[i] = py::int_(static_cast<int64_t>(op.bytes));
      seconds += op.returned - op.issued;
      payload += op.bytes;
      if (trace) {
        const double record[kWidth] = {op.step, double(kind), double(group), -1.0, op.bytes,
                                       0.0, double(channel), op.issued - last,
                                       op.returned - op.issued, -1.0, kNaN, kNaN};
        out = std::copy(record, record + kWidth, out);
        last = op.returned;
      }
    }
    double began = r.ops[end - 1].returned;
    for (size_t i = begin; i < end; ++i) {  // its waits, each referring to its issue
      const AllReduce& op = r.ops[i];
      seconds += op.ended - began;
      if (trace) {
        // 2 records per earlier pass's all-reduce, then this pass's issues
        const double issue = static_cast<double>(first + static_cast<int64_t>(begin + i));
        const double record[kWidth] = {op.step, double(wait_kind), double(group), -1.0,
                                       op.bytes, 0.0, double(channel), began - last,
                                       op.ended - began, issue, kNaN, kNaN};
        out = std::copy(record, record + kWidth, out);
        last = op.ended;
      }
      began = op.ended;
    }
  }
  r.ops.erase(r.ops.begin(), r.ops.begin() + n);
  r.into.erase(r.into.begin(), r.into.begin() + n);
  r.waited -= n;
  if (r.ops.empty()) {  // exactly nothing pending: no rounding left over
    std::fill(r.shared + kPayload, r.shared + kSlots, 0.0);
  } else {  // a backward pass cut short (a failing run): what it left behind
    r.shared[kPayload] -= payload;
    r.shared[kCalls] -= static_cast<double>(n);
    r.shared[kSeconds] -= seconds;
    total_wire(r);
  }
  return py::make_tuple(sizes, seconds, py::bytes(rows), last);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // calling the records takes them (take); memoryview(records) is `shared` (Slot), the
  // transport's view of it, which keeps them alive
  py::class_<Records, std::shared_ptr<Records>>(m, "Records", py::buffer_protocol())
      .def_buffer([](Records& r) {
        return py::buffer_info(r.shared, sizeof(double), py::format_descriptor<double>::format(),
                               1, {size_t(kSlots)}, {sizeof(double)});
      })
      .def_readwrite("dry", &Records::dry)
      .def("__call__", &take)
      .def(
          "learn_wire",
          [](Records& r, int64_t payload, double wire) {
            r.wire[payload] = wire;
            total_wire(r);
          },
          py::arg("payload"), py::arg("wire"));
  m.def("install", &install, py::arg("reducer"), py::arg("group"), py::arg("world_size"),
        py::arg("compression"), py::arg("communicating"));
}
