// llama_quantize IN.gguf OUT.gguf TYPE NTHREADS: what `llama-quantize --allow-requantize IN OUT
// TYPE NTHREADS` does (llama.cpp's llama_model_quantize with its default parameters), for TYPE
// in F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K, without the tool's `common` library, so
// that scripts/build_llama_cpp.sh need only build libllama.
// Built by scripts/build_llama_cpp.sh, run by scripts/check_llama_cpp.py.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: llama_quantize IN OUT TYPE NTHREADS\n");
        return 1;
    }
    static const struct { const char * name; llama_ftype ftype; } types[] = {
        {"F32", LLAMA_FTYPE_ALL_F32},         {"F16", LLAMA_FTYPE_MOSTLY_F16},
        {"BF16", LLAMA_FTYPE_MOSTLY_BF16},    {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
        {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},    {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M},
        {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M}, {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},
    };
    llama_model_quantize_params params = llama_model_quantize_default_params();
    bool found = false;
    for (const auto & t : types) {
        if (strcmp(argv[3], t.name) == 0) {
            params.ftype = t.ftype;
            found = true;
        }
    }
    if (!found) {
        fprintf(stderr, "llama_quantize: unknown type %s (add it to scripts/llama_quantize.cpp)\n",
                argv[3]);
        return 1;
    }
    params.allow_requantize = true;
    params.nthread = atoi(argv[4]);
    llama_backend_init();
    const uint32_t rc = llama_model_quantize(argv[1], argv[2], &params);
    llama_backend_free();
    if (rc != 0) {
        fprintf(stderr, "llama_quantize: failed to quantize %s\n", argv[1]);
        return 1;
    }
    return 0;
}
