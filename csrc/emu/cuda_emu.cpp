// The emulated device's scheduler: blocks one after another, the threads of a block as
// fibers, barriers and warp operations as rendezvous points checked against CUDA's rules.
// See cuda_emu.h for what is emulated and why.
#include "cuda_emu.h"

#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#endif

namespace cuda_emu {

thread_local const Position* current = nullptr;
thread_local const char* kernel_name = nullptr;

namespace {

constexpr unsigned char kPoison = 0xff;  // NaN in float16, bfloat16, float32 and float64
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kSharedBytes = 48 * 1024;  // the static shared memory limit of a block
#ifdef CUDA_EMU_ASAN
constexpr size_t kStackBytes = 512 * 1024;  // ASan's redzones make frames several times larger
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  TORCH_CHECK(*end == '\0' && x >= 1 && x <= 100000, name, " must be a positive integer, got '", v, "'");
  return static_cast<int>(x);
}

enum class State : int { Runnable, AtBarrier, AtWarpOp, Done };

struct Fiber {
  ucontext_t context;
  void* stack = nullptr;
  State state = State::Runnable;
  Position position;
  WarpRequest request{};
  const char* barrier_file = nullptr;
  int barrier_line = 0;
};

// One launch's state on this OS thread. Fibers and their stacks are kept for the next launch.
struct Scheduler {
  std::vector<Fiber> fibers;
  ucontext_t home;
  Fiber* running = nullptr;
  int threads = 0;
  const LaunchSite* site = nullptr;
  uint3 block{};
  void (*body)(void*) = nullptr;
  void* args = nullptr;
  std::string error;  // non-empty: the launch failed
  alignas(16) unsigned char shared[kSharedBytes];
  size_t shared_used = 0;
  std::vector<std::pair<const void*, void*>> shared_sites;
#ifdef CUDA_EMU_ASAN
  void* fake_stack = nullptr;  // ASan's bookkeeping for the scheduler's own stack
  const void* home_bottom = nullptr;
  size_t home_size = 0;
#endif

  ~Scheduler() {
    for (Fiber& f : fibers) {
      if (f.stack != nullptr) munmap(f.stack, kStackBytes);
    }
  }
};

thread_local Scheduler* scheduler = nullptr;

Scheduler& this_thread_scheduler() {
  static thread_local Scheduler instance;
  return instance;
}

// A source path from csrc/ on (the emulated build reaches the .cu files through generated wrappers).
std::string short_path(const char* file) {
  const std::string f = file;
  const size_t at = f.rfind("csrc/");
  return at == std::string::npos ? f : f.substr(at);
}

std::string describe(const LaunchSite& s) {
  std::ostringstream o;
  if (kernel_name != nullptr) {
    o << "kernel " << kernel_name;
  } else {
    o << "kernel `" << s.kernel << "` launched in " << s.launcher;
  }
  o << " (launched at " << short_path(s.file) << ":" << s.line << ")";
  return o.str();
}

std::string where(const Scheduler& s, int tid) {
  std::ostringstream o;
  o << "block (" << s.block.x << "," << s.block.y << "," << s.block.z << "), thread " << tid;
  return o.str();
}

// Threads of the block (by index) for which pred holds, as "3, 5-9, 31".
template <typename Pred>
std::string thread_list(const Scheduler& s, Pred pred) {
  std::ostringstream o;
  int first = -1;
  bool any = false;
  for (int t = 0; t <= s.threads; ++t) {
    const bool in = t < s.threads && pred(t);
    if (in && first < 0) first = t;
    if (!in && first >= 0) {
      o << (any ? ", " : "") << first;
      if (t - 1 > first) o << "-" << t - 1;
      any = true;
      first = -1;
    }
  }
  return o.str();
}

void fail(Scheduler& s, const std::string& message) {
  if (s.error.empty()) s.error = describe(*s.site) + ": " + message;
}

// Hands control from a fiber back to the scheduler (the fiber's state says why).
void yield_to_scheduler(Scheduler& s) {
  Fiber& f = *s.running;
#ifdef CUDA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, s.home_bottom, s.home_size);
  swapcontext(&f.context, &s.home);
  __sanitizer_finish_switch_fiber(fake, &s.home_bottom, &s.home_size);
#else
  swapcontext(&f.context, &s.home);
#endif
}

void fiber_main() {
  Scheduler& s = *scheduler;
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.home_bottom, &s.home_size);
#endif
  try {
    s.body(s.args);
  } catch (const std::exception& e) {
    fail(s, where(s, static_cast<int>(s.running - s.fibers.data())) + ": exception " + e.what());
  } catch (...) {
    fail(s, where(s, static_cast<int>(s.running - s.fibers.data())) + ": exception");
  }
  s.running->state = State::Done;
#ifdef CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, s.home_bottom, s.home_size);  // this fiber is finished
#endif
  setcontext(&s.home);
}

void resume(Scheduler& s, Fiber& f) {
  s.running = &f;
  current = &f.position;
#ifdef CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(&s.fake_stack, f.stack, kStackBytes);
  swapcontext(&s.home, &f.context);
  __sanitizer_finish_switch_fiber(s.fake_stack, nullptr, nullptr);
#else
  swapcontext(&s.home, &f.context);
#endif
  current = nullptr;
  s.running = nullptr;
}

const char* kind_name(WarpOpKind k) {
  switch (k) {
    case WarpOpKind::ShflIdx:
      return "__shfl_sync";
    case WarpOpKind::ShflUp:
      return "__shfl_up_sync";
    case WarpOpKind::ShflDown:
      return "__shfl_down_sync";
    case WarpOpKind::ShflXor:
      return "__shfl_xor_sync";
    case WarpOpKind::All:
      return "__all_sync";
    case WarpOpKind::Any:
      return "__any_sync";
    case WarpOpKind::Ballot:
      return "__ballot_sync";
    case WarpOpKind::SyncWarp:
      return "__syncwarp";
  }
  return "?";
}

bool same_call(const WarpRequest& a, const WarpRequest& b) {
  return a.kind == b.kind && a.mask == b.mask && a.line == b.line && std::strcmp(a.file, b.file) == 0 &&
         (a.kind == WarpOpKind::ShflIdx || a.kind == WarpOpKind::ShflUp || a.kind == WarpOpKind::ShflDown ||
                  a.kind == WarpOpKind::ShflXor
              ? a.width == b.width
              : true);
}

std::string op_name(const WarpRequest& r) {
  std::ostringstream o;
  o << kind_name(r.kind) << " (mask 0x" << std::hex << r.mask << std::dec << ") at " << short_path(r.file) << ":"
    << r.line;
  return o.str();
}

// Completes the warp operation that lane `first` of warp `w` waits at and returns true; or returns
// false, with `why` saying which lane has not arrived. Breaking a rule is recorded with fail().
bool complete_warp_op(Scheduler& s, int w, int first, std::string& why_not) {
  Fiber* lanes = s.fibers.data() + w * 32;
  const int n = std::min(32, s.threads - w * 32);
  const WarpRequest& r = lanes[first].request;
  const std::string at = "warp " + std::to_string(w) + " of " + where(s, w * 32 + first) + ": " + op_name(r);
  for (int l = 0; l < 32; ++l) {
    if (!(r.mask >> l & 1u)) continue;
    if (l >= n) {
      fail(s, at + " names lane " + std::to_string(l) + ", which the block does not have");
      return false;
    }
    const Fiber& f = lanes[l];
    if (f.state == State::AtWarpOp && same_call(f.request, r)) continue;
    const std::string why = f.state == State::Done        ? "has exited"
                            : f.state == State::AtBarrier ? "waits at __syncthreads at " + short_path(f.barrier_file) +
                                                                ":" + std::to_string(f.barrier_line)
                                                          : "waits at " + op_name(f.request);
    why_not = at + ": lane " + std::to_string(l) + " named in the mask never arrives (it " + why +
              ") -- a warp operation in divergent code";
    return false;
  }
  const bool shuffle = r.kind == WarpOpKind::ShflIdx || r.kind == WarpOpKind::ShflUp ||
                       r.kind == WarpOpKind::ShflDown || r.kind == WarpOpKind::ShflXor;
  if (shuffle && (r.width < 1 || r.width > 32 || (r.width & (r.width - 1)) != 0)) {
    fail(s, at + ": width " + std::to_string(r.width) + " is not a power of 2 in [1, 32]");
    return false;
  }
  uint64_t ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if ((r.mask >> l & 1u) && lanes[l].request.arg != 0) ballot |= 1u << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (!(r.mask >> l & 1u)) continue;
    WarpRequest& q = lanes[l].request;
    int source = l;
    const int segment = l - l % r.width;
    switch (r.kind) {
      case WarpOpKind::ShflIdx:
        source = segment + ((q.arg % r.width) + r.width) % r.width;
        break;
      case WarpOpKind::ShflUp:
        source = l - q.arg >= segment ? l - q.arg : l;
        break;
      case WarpOpKind::ShflDown:
        source = l + q.arg < segment + r.width ? l + q.arg : l;
        break;
      case WarpOpKind::ShflXor:
        source = l ^ q.arg;
        source = source < segment + r.width && source >= segment ? source : l;
        break;
      case WarpOpKind::All:
        q.result = ballot == r.mask;
        break;
      case WarpOpKind::Any:
        q.result = ballot != 0;
        break;
      case WarpOpKind::Ballot:
        q.result = ballot;
        break;
      case WarpOpKind::SyncWarp:
        q.result = 0;
        break;
    }
    if (shuffle) {
      if (!(r.mask >> source & 1u)) {
        fail(s, at + ": lane " + std::to_string(l) + " reads lane " + std::to_string(source) +
                    ", which is not in the mask (its value is undefined)");
        return false;
      }
      q.result = lanes[source].request.value;
    }
  }
  for (int l = 0; l < 32; ++l) {
    if (r.mask >> l & 1u) lanes[l].state = State::Runnable;
  }
  return true;
}

// Runs one block to completion; returns false (with s.error set) on a launch error.
bool run_block(Scheduler& s, uint3 block, dim3 grid, dim3 block_dim) {
  s.block = block;
  std::memset(s.shared, kPoison, sizeof(s.shared));
  s.shared_used = 0;
  s.shared_sites.clear();
  for (int t = 0; t < s.threads; ++t) {
    Fiber& f = s.fibers[t];
    if (f.stack == nullptr) {
      f.stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      TORCH_CHECK(f.stack != MAP_FAILED, "emulated CUDA device: cannot map a fiber stack");
      mprotect(f.stack, 4096, PROT_NONE);  // a guard page below the stack turns an overflow into a fault
    }
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
    f.state = State::Runnable;
    const unsigned t_ = static_cast<unsigned>(t);
    f.position.thread = {t_ % block_dim.x, t_ / block_dim.x % block_dim.y, t_ / (block_dim.x * block_dim.y)};
    f.position.block = block;
    f.position.block_dim = block_dim;
    f.position.grid_dim = grid;
  }
  int done = 0;
  while (true) {
    for (int t = 0; t < s.threads; ++t) {
      Fiber& f = s.fibers[t];
      if (f.state != State::Runnable) continue;
      resume(s, f);
      if (!s.error.empty()) return false;
      if (f.state == State::Done) ++done;
    }
    if (done == s.threads) return true;
    // Nothing can run: every live thread waits at a barrier or a warp operation. Complete the
    // warp operations all of whose lanes have arrived; if some wait but none can complete, their
    // missing lanes will never come.
    bool waiting_at_warp_op = false;
    bool completed = false;
    std::string stuck;
    for (int t = 0; t < s.threads; ++t) {
      if (s.fibers[t].state != State::AtWarpOp) continue;
      waiting_at_warp_op = true;
      std::string why;
      if (complete_warp_op(s, t / 32, t % 32, why)) {
        completed = true;
      } else if (stuck.empty()) {
        stuck = why;
      }
    }
    if (!s.error.empty()) return false;
    if (completed) continue;
    if (waiting_at_warp_op) {
      fail(s, stuck);
      return false;
    }
    const Fiber& first = *std::find_if(s.fibers.begin(), s.fibers.begin() + s.threads,
                                       [](const Fiber& f) { return f.state == State::AtBarrier; });
    const std::string barrier = "__syncthreads at " + short_path(first.barrier_file) + ":" +
                                std::to_string(first.barrier_line) + " in " +
                                where(s, static_cast<int>(&first - s.fibers.data()));
    const std::string exited = thread_list(s, [&](int t) { return s.fibers[t].state == State::Done; });
    if (!exited.empty()) {
      fail(s, barrier + " is not reached by threads " + exited + ", which have exited");
      return false;
    }
    const std::string elsewhere = thread_list(s, [&](int t) {
      const Fiber& f = s.fibers[t];
      return f.barrier_line != first.barrier_line || std::strcmp(f.barrier_file, first.barrier_file) != 0;
    });
    if (!elsewhere.empty()) {
      fail(s, barrier + ": threads " + elsewhere + " wait at a different __syncthreads");
      return false;
    }
    for (int t = 0; t < s.threads; ++t) s.fibers[t].state = State::Runnable;
  }
}

std::vector<uint64_t> block_order(uint64_t blocks) {
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), uint64_t{0});
  const char* v = std::getenv("FOCAL_LOSS_EXT_EMU_BLOCK_ORDER");
  const std::string mode = v == nullptr ? "forward" : v;
  if (mode.empty() || mode == "forward") return order;
  if (mode == "reverse") {
    std::reverse(order.begin(), order.end());
    return order;
  }
  if (mode == "random" || mode.rfind("random:", 0) == 0) {
    const uint64_t seed = mode == "random" ? 0 : std::strtoull(mode.c_str() + 7, nullptr, 10);
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
    return order;
  }
  TORCH_CHECK(false, "FOCAL_LOSS_EXT_EMU_BLOCK_ORDER must be forward, reverse, random or random:SEED, got '", mode,
              "'");
}

// Fills every allocation made while an emulated operator runs on this thread with kPoison.
thread_local int poison_depth = 0;

struct PoisoningAllocator final : c10::Allocator {
  c10::Allocator* base;
  explicit PoisoningAllocator(c10::Allocator* b) : base(b) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = base->allocate(n);
    if (poison_depth > 0 && p.get() != nullptr) std::memset(p.get(), kPoison, n);
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { base->copy_data(dest, src, count); }
};

void install_poisoning_allocator() {
  static PoisoningAllocator* allocator = [] {
    auto* a = new PoisoningAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(a, /*priority=*/100);
    return a;
  }();
  (void)allocator;
}

}  // namespace

// The multiprocessor counts of the devices given out so far, by device index.
static std::mutex devices_mutex;
static std::vector<int> device_sms;

int current_device() {
  const int sms = env_int("FOCAL_LOSS_EXT_EMU_SMS", 132);
  const std::lock_guard<std::mutex> lock(devices_mutex);
  const auto known = std::find(device_sms.begin(), device_sms.end(), sms);
  if (known != device_sms.end()) return static_cast<int>(known - device_sms.begin());
  TORCH_CHECK(device_sms.size() < kMaxDevices, "FOCAL_LOSS_EXT_EMU_SMS took more than ", kMaxDevices,
              " different values in one process");
  device_sms.push_back(sms);
  return static_cast<int>(device_sms.size()) - 1;
}

int multiprocessor_count(int device) {
  const std::lock_guard<std::mutex> lock(devices_mutex);
  TORCH_CHECK(device >= 0 && device < static_cast<int>(device_sms.size()), "no emulated device ", device);
  return device_sms[device];
}

PoisonNewAllocations::PoisonNewAllocations() {
  install_poisoning_allocator();
  ++poison_depth;
}
PoisonNewAllocations::~PoisonNewAllocations() {
  --poison_depth;
}

uint64_t warp_op(WarpRequest request) {
  TORCH_CHECK(scheduler != nullptr && scheduler->running != nullptr, kind_name(request.kind),
              " called outside an emulated kernel");
  Scheduler& s = *scheduler;
  Fiber& f = *s.running;
  const int lane = static_cast<int>(&f - s.fibers.data()) % 32;
  if (!(request.mask >> lane & 1u)) {
    fail(s, where(s, static_cast<int>(&f - s.fibers.data())) + ": " + op_name(request) + " is called by lane " +
                std::to_string(lane) + ", which its mask leaves out");
    f.state = State::Done;
    yield_to_scheduler(s);
  }
  f.request = request;
  f.state = State::AtWarpOp;
  yield_to_scheduler(s);
  return f.request.result;
}

void syncthreads(const char* file, int line) {
  TORCH_CHECK(scheduler != nullptr && scheduler->running != nullptr, "__syncthreads called outside an emulated kernel");
  Scheduler& s = *scheduler;
  Fiber& f = *s.running;
  f.barrier_file = file;
  f.barrier_line = line;
  f.state = State::AtBarrier;
  yield_to_scheduler(s);
}

void device_assert_failed(const char* condition, const char* file, int line) {
  TORCH_CHECK(scheduler != nullptr && scheduler->running != nullptr, "device assert `", condition,
              "` failed outside an emulated kernel");
  Scheduler& s = *scheduler;
  fail(s, where(s, static_cast<int>(s.running - s.fibers.data())) + ": device-side assert triggered: `" + condition +
              "` at " + short_path(file) + ":" + std::to_string(line));
  s.running->state = State::Done;
  yield_to_scheduler(s);
  std::abort();  // never resumed
}

void* shared_array(const void* site, size_t bytes, size_t alignment) {
  TORCH_CHECK(scheduler != nullptr && scheduler->running != nullptr, "shared memory used outside an emulated kernel");
  Scheduler& s = *scheduler;
  for (const auto& entry : s.shared_sites) {
    if (entry.first == site) return entry.second;
  }
  const size_t offset = (s.shared_used + alignment - 1) / alignment * alignment;
  TORCH_CHECK(offset + bytes <= kSharedBytes, describe(*s.site), ": more than ", kSharedBytes,
              " bytes of shared memory");
  void* p = s.shared + offset;
  s.shared_used = offset + bytes;
  s.shared_sites.emplace_back(site, p);
  return p;
}

void run_grid(const LaunchSite& site, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* args) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreadsPerBlock, describe(site), ": block of ", threads,
              " threads (the limit is ", kMaxThreadsPerBlock, ")");
  TORCH_CHECK(shared_bytes == 0, describe(site), ": dynamic shared memory is not emulated");
  TORCH_CHECK(scheduler == nullptr, describe(site), ": a launch from inside a kernel");
  Scheduler& s = this_thread_scheduler();
  if (s.fibers.size() < threads) s.fibers.resize(kMaxThreadsPerBlock);
  s.threads = static_cast<int>(threads);
  s.site = &site;
  s.body = body;
  s.args = args;
  s.error.clear();
  const std::vector<uint64_t> order = block_order(static_cast<uint64_t>(grid.x) * grid.y * grid.z);
  // Set for the launch only, also when it throws.
  struct Active {
    explicit Active(Scheduler* s) {
      scheduler = s;
      kernel_name = nullptr;
    }
    ~Active() {
      scheduler = nullptr;
      kernel_name = nullptr;
    }
  };
  bool ok = true;
  {
    const Active active(&s);
    for (const uint64_t b : order) {
      const uint3 index{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                        static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
      if (!(ok = run_block(s, index, grid, block))) break;
    }
  }
  TORCH_CHECK(ok, "emulated CUDA launch failed: ", s.error);
}

}  // namespace cuda_emu
