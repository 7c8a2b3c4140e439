// The ddp baseline's compiled communication hook (built by baselines/ddp_hook.py).
//
// It does what baselines/ddp.py's Python hook does (PyTorch's allreduce_hook, or with a 16-bit
// dtype its fp16/bf16_compress_hook: cast, divide by the world size, all-reduce, cast back
// into the bucket) on the same process group, and keeps, per bucket, the bytes and the times
// the transport needs: when the all-reduce was issued, when issuing returned and when DDP's
// wait for it ended. The algorithm hands those to the transport after backward
// (Transport.record_async_all_reduces), so the bytes, messages and trace are the Python
// hook's, without Python in DDP's backward pass (a Python hook costs a small model's step
// 4-8% on 2 vCPUs: tests/benchmarks/test_bench_ddp.py). While the rank waits, it is marked
// as communicating for the launcher's hang blame, as the transport marks its own waits.
#include <torch/extension.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <time.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

// Python's time.perf_counter clock on Linux, so the records line up with the transport's.
double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// What the hook saw since the last take(): 4 numbers per all-reduce, in issue order.
struct Records {
  std::vector<double> values;  // bytes, issued at, issue returned, wait ended
  std::vector<at::Tensor> into;  // a 16-bit all-reduce's bucket, to copy the result into
  size_t waited = 0;  // all-reduces whose wait has ended
  bool dry = false;  // pass buckets through untouched (baselines/ddp.py: settle_buckets)
  // the launcher's mark that this rank waits on its peers (suite.launcher.communicating_flag),
  // set from the first issue to the last wait's end, so a hang meanwhile blames the peer
  volatile int8_t* communicating = nullptr;
};

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
    const double t0 = now();
    at::Tensor x = dtype_ ? buffer.to(*dtype_).div_(world_size_) : buffer.div_(world_size_);
    std::vector<at::Tensor> tensors{x};
    auto future = group_->allreduce(tensors)->getFuture();
    const double t1 = now();
    records_->values.insert(
        records_->values.end(),
        {static_cast<double>(x.numel() * x.element_size()), t0, t1, 0.0});
    records_->into.push_back(dtype_ ? buffer : at::Tensor());
    return future;
  }

  // DDP calls this for each bucket, in order, right after waiting for its future.
  at::Tensor parseHookResult(const c10::IValue& result) override {
    at::Tensor x = c10d::detail::parseCppCommHookResult(result);
    Records& r = *records_;
    if (r.dry || r.waited >= r.into.size()) {
      return x;
    }
    r.values[4 * r.waited + 3] = now();
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

// The all-reduces waited for since the last take, for the transport
// (suite.transport.Transport.record_async_all_reduces, which documents the arguments): their
// payload bytes in issue order, the seconds this rank spent issuing them and waiting for them,
// their trace records packed as suite.trace.Recorder holds them (trace.FIELDS, kWidth doubles
// each: every issue, then every wait) or nothing where `trace` is off, and when the last of
// them ended. They are then forgotten. DDP waits for them in issue order once all are issued,
// so each wait began when the previous one ended or, for the first, when the last issue
// returned. One call a step, and no Python object per all-reduce but its size: this runs
// after every backward pass, where each line of Python costs a small model's step.
py::tuple take(
    Records& r,
    int64_t step,  // integers, as Python holds them: a double parameter given an int
    int64_t kind,  // takes pybind's second, converting pass over the arguments
    int64_t wait_kind,
    int64_t group,
    int64_t channel,
    int64_t first,
    double last_end,
    bool trace) {
  constexpr size_t kWidth = 12;  // trace.WIDTH
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // the fields every record shares, as the doubles a record holds
  const double at_step = step, in_group = group, on_channel = channel;
  const size_t n = r.waited;
  py::tuple sizes(n);
  std::string rows(trace ? 2 * n * kWidth * sizeof(double) : 0, '\0');
  double* out = reinterpret_cast<double*>(rows.data());
  double seconds = 0.0;
  double last = last_end;
  for (size_t i = 0; i < n; ++i) {  // the issues
    const double* v = &r.values[4 * i];
    sizes[i] = py::int_(static_cast<int64_t>(v[0]));
    seconds += v[2] - v[1];
    if (trace) {
      const double record[kWidth] = {at_step, double(kind), in_group, -1.0, v[0], 0.0,
                                     on_channel, v[1] - last, v[2] - v[1], -1.0, nan, nan};
      out = std::copy(record, record + kWidth, out);
      last = v[2];
    }
  }
  double began = n ? r.values[4 * (n - 1) + 2] : 0.0;
  for (size_t i = 0; i < n; ++i) {  // the waits, each referring to its issue
    const double* v = &r.values[4 * i];
    const double ended = std::max(v[3], began);
    seconds += ended - began;
    if (trace) {
      const double record[kWidth] = {at_step, double(wait_kind), in_group, -1.0, v[0], 0.0,
                                     on_channel, began - last, ended - began, double(first + i),
                                     nan, nan};
      out = std::copy(record, record + kWidth, out);
      last = ended;
    }
    began = ended;
  }
  r.values.erase(r.values.begin(), r.values.begin() + 4 * n);
  r.into.erase(r.into.begin(), r.into.begin() + n);
  r.waited = 0;
  return py::make_tuple(sizes, seconds, py::bytes(rows), last);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // calling the records takes them (take)
  py::class_<Records, std::shared_ptr<Records>>(m, "Records")
      .def_readwrite("dry", &Records::dry)
      .def("__call__", &take);
  m.def("install", &install, py::arg("reducer"), py::arg("group"), py::arg("world_size"),
        py::arg("compression"), py::arg("communicating"));
}
