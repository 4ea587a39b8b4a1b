// sparsefab flow harness: stream sources and sinks over Verilator top-level port members.
//
// Used by the C++ main that sparsefab.sim.flow generates for each design: Python writes the
// stream words of every input port to files, the compiled binary drives the valid/ready
// handshakes cycle by cycle in C++ (optional seeded random stalls and backpressure), and
// writes the output words, the cycle count and the counter ports back for Python to read.
//
// Port members: CData/SData/IData/QData for ports up to 64 bits, VlWide<N> above.  Stream
// words are little-endian 32-bit chunks, ceil(width/32) per item, first chunk = low bits.
//
// Handshake timing (same rule as sparsefab.sim.streams): inputs are driven with the clock
// low, the model is evaluated, and a transfer happens at the following rising edge iff
// valid and ready are both 1 at that point.  A source keeps valid high (and its payload
// stable) from the first cycle it offers an item until the item is accepted, as the
// Amaranth stream protocol requires; stalls only insert idle cycles between items.
#pragma once

#include <verilated.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace sf {

// ---------------------------------------------------------------- port access by type
inline void put(CData& m, const uint32_t* w, int) { m = static_cast<CData>(w[0]); }
inline void put(SData& m, const uint32_t* w, int) { m = static_cast<SData>(w[0]); }
inline void put(IData& m, const uint32_t* w, int) { m = w[0]; }
inline void put(QData& m, const uint32_t* w, int n) {
    m = static_cast<QData>(w[0]) | (n > 1 ? static_cast<QData>(w[1]) << 32 : 0);
}
template <std::size_t N>
inline void put(VlWide<N>& m, const uint32_t* w, int n) {
    for (std::size_t i = 0; i < N; ++i) m[i] = static_cast<int>(i) < n ? w[i] : 0;
}

inline void get(const CData& m, uint32_t* w, int) { w[0] = m; }
inline void get(const SData& m, uint32_t* w, int) { w[0] = m; }
inline void get(const IData& m, uint32_t* w, int) { w[0] = m; }
inline void get(const QData& m, uint32_t* w, int n) {
    w[0] = static_cast<uint32_t>(m);
    if (n > 1) w[1] = static_cast<uint32_t>(m >> 32);
}
template <std::size_t N>
inline void get(const VlWide<N>& m, uint32_t* w, int n) {
    for (int i = 0; i < n; ++i) w[i] = static_cast<std::size_t>(i) < N ? m[i] : 0;
}

// ---------------------------------------------------------------- seeded generator
struct Rng {  // splitmix64: tiny, fast, and identical on every platform
    uint64_t s;
    explicit Rng(uint64_t seed = 0) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // true with probability p (p given as a 32-bit fixed-point threshold)
    bool chance(uint32_t threshold) { return threshold && static_cast<uint32_t>(next() >> 32) < threshold; }
};

inline uint64_t name_hash(const char* s) {  // FNV-1a, to derive per-port streams from one seed
    uint64_t h = 1469598103934665603ull;
    for (; *s; ++s) h = (h ^ static_cast<unsigned char>(*s)) * 1099511628211ull;
    return h;
}

struct StreamStats {
    uint64_t fired = 0;
    int64_t first = -1;  // cycle of the first / last transfer
    int64_t last = -1;
    void note(uint64_t cycle) {
        if (first < 0) first = static_cast<int64_t>(cycle);
        last = static_cast<int64_t>(cycle);
        ++fired;
    }
};

// ---------------------------------------------------------------- input stream
template <typename P>
struct Source {
    std::string name;
    CData* valid;
    CData* ready;  // nullptr for a stream without ready (always accepted)
    P* payload;    // nullptr for a stream without payload
    int nw;      // 32-bit words per item
    std::vector<uint32_t> data;
    std::size_t items = 0, idx = 0;
    uint32_t stall = 0;  // probability of an idle cycle before offering an item
    bool holding = false;
    Rng rng;
    StreamStats stats;

    Source(const char* n, CData* v, CData* r, P* p, int words) : name(n), valid(v), ready(r), payload(p), nw(words) {}

    bool drained() const { return idx >= items; }
    void drive() {
        if (idx < items && (holding || !rng.chance(stall))) {
            *valid = 1;
            if (payload) put(*payload, &data[idx * nw], nw);
            holding = true;
        } else {
            *valid = 0;
        }
    }
    void sample(uint64_t cycle) {
        if (*valid && (!ready || *ready)) {
            ++idx;
            holding = false;
            stats.note(cycle);
        }
    }
};

// ---------------------------------------------------------------- output stream
template <typename P>
struct Sink {
    std::string name;
    CData* valid;
    CData* ready;  // nullptr for a stream without ready (always accepted)
    P* payload;
    int nw;
    std::vector<uint32_t> out;
    int64_t expect = -1;  // items that complete the run (-1: no expectation)
    uint32_t stall = 0;   // probability that ready is low in a cycle
    Rng rng;
    StreamStats stats;
    std::vector<uint32_t> tmp;

    Sink(const char* n, CData* v, CData* r, P* p, int words) : name(n), valid(v), ready(r), payload(p), nw(words), tmp(words) {}

    bool complete() const { return expect < 0 || static_cast<int64_t>(stats.fired) >= expect; }
    void drive() {
        if (ready) *ready = rng.chance(stall) ? 0 : 1;
    }
    void sample(uint64_t cycle) {
        if (*valid && (!ready || *ready)) {
            if (payload) {
                get(*payload, tmp.data(), nw);
                out.insert(out.end(), tmp.begin(), tmp.end());
            }
            stats.note(cycle);
        }
    }
};

// ---------------------------------------------------------------- files
inline bool read_words(const std::string& path, std::vector<uint32_t>& v) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    std::fseek(f, 0, SEEK_END);
    long size = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    v.resize(static_cast<std::size_t>(size) / 4);
    std::size_t got = v.empty() ? 0 : std::fread(v.data(), 4, v.size(), f);
    std::fclose(f);
    return got == v.size();
}

inline bool write_words(const std::string& path, const std::vector<uint32_t>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    std::size_t put_n = v.empty() ? 0 : std::fwrite(v.data(), 4, v.size(), f);
    std::fclose(f);
    return put_n == v.size();
}

template <typename T>
inline std::string hex_of(const T& m, int nw) {
    std::vector<uint32_t> w(nw);
    get(m, w.data(), nw);
    std::string s = "0x";
    char buf[16];
    for (int i = nw - 1; i >= 0; --i) {
        std::snprintf(buf, sizeof buf, "%08x", w[i]);
        s += buf;
    }
    return s;
}

template <typename S>
inline void stats_json(FILE* f, const S& s, bool comma) {
    std::fprintf(f, "    \"%s\": {\"fired\": %llu, \"first\": %lld, \"last\": %lld}%s\n", s.name.c_str(),
                 static_cast<unsigned long long>(s.stats.fired), static_cast<long long>(s.stats.first),
                 static_cast<long long>(s.stats.last), comma ? "," : "");
}

}  // namespace sf
