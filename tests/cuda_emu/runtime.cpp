// The grid runtime of the CUDA emulator (see cuda_emu.h and build.py). Linked into every emulated kernel module.
//
// A launch runs its blocks on a few OS worker threads (blocks in parallel, so atomics between blocks are real);
// within a block the CUDA threads are fibers of one worker, each running until it reaches __syncthreads() or
// returns. A barrier phase ends when every thread of the block has arrived; threads that exit while others wait at
// a barrier are an error (a barrier in divergent code). Because a fiber runs up to its next barrier in one go, and
// the threads of a phase run in a shuffled order (the same on every run), shared memory read without the barrier
// that should order it is read before the other threads wrote it: a missing __syncthreads() shows on every run,
// not once in a while. Dynamic shared memory starts filled with 0xFF bytes
// (NaN for float and double) and has a guard after it that is checked after every block.
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"

// ------------------------------------------------------------------------------------------- context switch
// On x86-64 a minimal switch (callee-saved registers, MXCSR and the x87 control word: ~10 ns); elsewhere ucontext
// (~1 us: it saves the signal mask with a system call).
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl emu_switch
.hidden emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");
struct Context {
    void* sp = nullptr;
};
inline void switch_to(Context& save, Context& to) { emu_switch(&save.sp, to.sp); }
inline void init_context(Context& c, char* stack, size_t size, void (*fn)()) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** p = (void**)top;
    *--p = nullptr;      // (fn's return address: fn never returns)
    *--p = (void*)fn;    // emu_switch's ret goes to fn with rsp = 8 mod 16, as after a call
    for (int i = 0; i < 6; ++i) *--p = nullptr;  // rbp rbx r12 r13 r14 r15
    *--p = nullptr;
    ((uint32_t*)p)[0] = 0x1F80;  // MXCSR default
    ((uint16_t*)p)[2] = 0x037F;  // x87 control word default
    c.sp = p;
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_to(Context& save, Context& to) { swapcontext(&save.uc, &to.uc); }
inline void init_context(Context& c, char* stack, size_t size, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace {

enum State { READY, AT_BARRIER, DONE };
constexpr size_t kStack = 256 * 1024;  // per fiber, reserved lazily (MAP_NORESERVE), a guard page below it
constexpr size_t kSmemGuard = 256;

struct Launch {
    void (*tramp)(void**);
    void** args;
    dim3 grid, block;
    size_t shared;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;
    void fail(const std::string& msg) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failed.exchange(true)) error = msg;
    }
};

struct Worker {
    Launch* L = nullptr;
    int n = 0;  // threads per block
    std::vector<Context> ctx;
    std::vector<int> state;
    std::vector<int> perm;
    char* stacks = nullptr;
    size_t stacks_bytes = 0;
    Context sched;
    int cur = 0;
    bool fibers = false;  // false: the threads run as plain calls (no barrier reached by the first one)
    bool stray_barrier = false;
    unsigned char* smem = nullptr;

    ~Worker() {
        if (stacks) munmap(stacks, stacks_bytes);
        free(smem);
    }
};

thread_local Worker* W = nullptr;

uint3 thread_index(int t, dim3 b) {
    return uint3{(unsigned)(t % b.x), (unsigned)((t / b.x) % b.y), (unsigned)(t / (b.x * b.y))};
}

void fiber_entry() {
    Worker* w = W;
    w->L->tramp(w->L->args);
    w->state[w->cur] = DONE;
    switch_to(w->ctx[w->cur], w->sched);  // never resumed
    __builtin_trap();
}

bool make_fiber(Worker* w, int t) {
    if (!w->stacks) {
        w->stacks_bytes = (size_t)w->n * kStack;
        void* p = mmap(nullptr, w->stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) return false;
        w->stacks = (char*)p;
        long page = sysconf(_SC_PAGESIZE);
        for (int i = 0; i < w->n; ++i) mprotect(w->stacks + (size_t)i * kStack, page, PROT_NONE);  // overflow: SIGSEGV
    }
    init_context(w->ctx[t], w->stacks + (size_t)t * kStack, kStack, fiber_entry);
    w->state[t] = READY;
    return true;
}

void resume(Worker* w, int t) {
    threadIdx = thread_index(t, w->L->block);
    w->cur = t;
    switch_to(w->sched, w->ctx[t]);
}

std::string block_name(uint3 b) {
    return "block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + ")";
}

void run_block(Worker* w, long long linear) {
    Launch* L = w->L;
    const dim3 g = L->grid;
    blockIdx = uint3{(unsigned)(linear % g.x), (unsigned)((linear / g.x) % g.y), (unsigned)(linear / ((long long)g.x * g.y))};
    if (w->smem) memset(w->smem, 0xFF, L->shared + kSmemGuard);
    const int n = w->n;
    // The threads of each phase run in a shuffled order (fixed per block and phase, so runs repeat exactly): a
    // thread that reads what a higher one, or a lower one, should have written first, reads it too early.
    std::vector<int>& perm = w->perm;
    auto shuffle = [&](int phase) {
        uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(linear + 1) + 0xD1B54A32D192ED03ull * (uint64_t)(phase + 1);
        for (int i = 0; i < n; ++i) perm[i] = i;
        for (int i = n - 1; i > 0; --i) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            int j = (int)(s % (uint64_t)(i + 1));
            int tmp = perm[i];
            perm[i] = perm[j], perm[j] = tmp;
        }
    };
    shuffle(0);
    auto order = [&](int, int i) { return perm[i]; };

    // The first thread runs as a fiber; if it returns without reaching a barrier, the block has none (a barrier
    // that only some threads reach is an error anyway) and the others run as plain calls, which is fast.
    int first = order(0, 0);
    w->fibers = true;
    if (!make_fiber(w, first)) return L->fail("could not allocate fiber stacks");
    resume(w, first);
    if (w->state[first] == DONE) {
        w->fibers = false;
        w->stray_barrier = false;
        for (int i = 1; i < n; ++i) {
            int t = order(0, i);
            threadIdx = thread_index(t, L->block);
            w->cur = t;
            L->tramp(L->args);
        }
        if (w->stray_barrier)
            L->fail("__syncthreads() reached by some threads of " + block_name(blockIdx) +
                    " but not by thread " + std::to_string(first) + ": a barrier in divergent code");
    } else {
        for (int t = 0; t < n; ++t)
            if (t != first && !make_fiber(w, t)) return L->fail("could not allocate fiber stacks");
        for (int phase = 0;; ++phase) {
            if (phase) shuffle(phase);
            for (int i = 0; i < n; ++i) {
                int t = order(phase, i);
                if (w->state[t] == READY) resume(w, t);
            }
            int done = 0;
            for (int t = 0; t < n; ++t) done += w->state[t] == DONE;
            if (done == n) break;
            if (done > 0) {
                L->fail("__syncthreads() number " + std::to_string(phase + 1) + " of " + block_name(blockIdx) +
                        " reached by " + std::to_string(n - done) + " of its " + std::to_string(n) +
                        " threads, the others returned: a barrier in divergent code");
                break;
            }
            for (int t = 0; t < n; ++t) w->state[t] = READY;
        }
    }
    if (w->smem) {
        for (size_t i = 0; i < kSmemGuard; ++i)
            if (w->smem[L->shared + i] != 0xFF) {
                L->fail(block_name(blockIdx) + " wrote past the end of its dynamic shared memory (shared_mem=" +
                        std::to_string(L->shared) + " bytes), at byte " + std::to_string(L->shared + i));
                break;
            }
    }
}

void work(Launch* L) {
    Worker w;
    w.L = L;
    w.n = (int)(L->block.x * L->block.y * L->block.z);
    w.ctx.resize(w.n);
    w.state.assign(w.n, DONE);
    w.perm.resize(w.n);
    w.smem = (unsigned char*)aligned_alloc(256, ((L->shared + kSmemGuard + 255) / 256) * 256);
    W = &w;
    blockDim = L->block;
    gridDim = L->grid;
    const long long nblocks = (long long)L->grid.x * L->grid.y * L->grid.z;
    for (long long b; !L->failed && (b = L->next++) < nblocks;) run_block(&w, b);
    W = nullptr;
}

// ------------------------------------------------------------------------------ OS-thread mode (opt-in)
// MINISR_CUDA_EMU_THREADS=os: the threads of a block are real OS threads (one per CUDA thread), __syncthreads() a
// mutex/condition-variable barrier between them, the blocks one after the other (static __shared__ arrays are then
// plain statics: build.py compiles the kernels with -DEMU_OS_THREADS). Slower and not reproducible, but a race
// between threads of a block that no barrier is missing for (a plain += where an atomic is needed) can show.
struct OsBlock {
    Launch* L;
    int n;
    long long nblocks;
    unsigned char* smem;
    std::mutex mu;
    std::condition_variable cv;
    int arrived = 0, exited = 0;
    long long gen = 0, end_gen = 0;
    bool stop = false;
};
thread_local OsBlock* OS = nullptr;

void os_divergent(OsBlock* B) {  // (mu held) some threads wait at a barrier, all others returned
    B->L->fail("__syncthreads() of " + block_name(blockIdx) + " reached by " + std::to_string(B->arrived) + " of its " +
               std::to_string(B->n) + " threads, the others returned: a barrier in divergent code");
    B->arrived = 0;
    ++B->gen;
    B->cv.notify_all();
}

void os_barrier(OsBlock* B) {
    std::unique_lock<std::mutex> lock(B->mu);
    long long g = B->gen;
    if (++B->arrived + B->exited == B->n) {
        if (B->exited) return os_divergent(B);
        B->arrived = 0;
        ++B->gen;
        B->cv.notify_all();
        return;
    }
    B->cv.wait(lock, [&] { return B->gen != g; });
}

void os_thread(OsBlock* B, int t) {
    OS = B;
    Launch* L = B->L;
    threadIdx = thread_index(t, L->block);
    blockDim = L->block;
    gridDim = L->grid;
    const dim3 g = L->grid;
    for (long long b = 0; b < B->nblocks; ++b) {
        blockIdx = uint3{(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y), (unsigned)(b / ((long long)g.x * g.y))};
        L->tramp(L->args);
        std::unique_lock<std::mutex> lock(B->mu);
        long long e = B->end_gen;
        ++B->exited;
        if (B->arrived && B->arrived + B->exited == B->n) os_divergent(B);
        if (B->exited == B->n) {  // the block is done: check and refill its shared memory, start the next one
            for (size_t i = 0; i < kSmemGuard; ++i)
                if (B->smem[L->shared + i] != 0xFF) {
                    L->fail(block_name(blockIdx) + " wrote past the end of its dynamic shared memory (shared_mem=" +
                            std::to_string(L->shared) + " bytes)");
                    break;
                }
            memset(B->smem, 0xFF, L->shared + kSmemGuard);
            B->exited = 0;
            B->stop = L->failed;
            ++B->end_gen;
            B->cv.notify_all();
        } else {
            B->cv.wait(lock, [&] { return B->end_gen != e; });
        }
        if (B->stop) break;
    }
    OS = nullptr;
}

void run_os_threads(Launch* L) {
    OsBlock B;
    B.L = L;
    B.n = (int)(L->block.x * L->block.y * L->block.z);
    B.nblocks = (long long)L->grid.x * L->grid.y * L->grid.z;
    B.smem = (unsigned char*)aligned_alloc(256, ((L->shared + kSmemGuard + 255) / 256) * 256);
    memset(B.smem, 0xFF, L->shared + kSmemGuard);
    std::vector<std::thread> threads;
    for (int t = 0; t < B.n; ++t) threads.emplace_back(os_thread, &B, t);
    for (auto& th : threads) th.join();
    free(B.smem);
}

}  // namespace

namespace emu {
void syncthreads() {
    if (OS) return os_barrier(OS);
    Worker* w = W;
    if (!w->fibers) {  // reached by a later thread after the first one returned without a barrier
        w->stray_barrier = true;
        return;
    }
    w->state[w->cur] = AT_BARRIER;
    switch_to(w->ctx[w->cur], w->sched);
}

unsigned char* dynamic_shared() { return OS ? OS->smem : W->smem; }
}  // namespace emu

extern "C" int emu_launch(void (*tramp)(void**), void** args, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, size_t shared, int workers, int os_threads, char* err,
                          size_t errlen) {
    Launch L;
    L.tramp = tramp;
    L.args = args;
    L.grid = dim3(gx, gy, gz);
    L.block = dim3(bx, by, bz);
    L.shared = shared;
    long long nblocks = (long long)gx * gy * gz;
    if (os_threads) {
        run_os_threads(&L);
    } else {
        int nw = (int)(workers < nblocks ? workers : nblocks);
        std::vector<std::thread> pool;
        for (int i = 1; i < nw; ++i) pool.emplace_back(work, &L);
        work(&L);
        for (auto& t : pool) t.join();
    }
    if (L.failed) {
        snprintf(err, errlen, "%s", L.error.c_str());
        return 1;
    }
    return 0;
}
