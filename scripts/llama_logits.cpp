// llama_logits MODEL.gguf LORA.gguf|- TEXT_FILE OUT: llama.cpp's logits for every token of a
// text, with an optional LoRA adapter applied at scale 1, written as
// i32 n_tokens, i32 n_vocab, i32 tokens[n_tokens], f32 logits[n_tokens][n_vocab]. The KV
// cache is kept in f32.
// Built by scripts/build_llama_cpp.sh against the libllama it builds, run by
// scripts/check_llama_cpp.py.
#include "llama.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

static int fail(const char * what) {
    fprintf(stderr, "llama_logits: %s\n", what);
    return 1;
}

int main(int argc, char ** argv) {
    if (argc != 5) {
        return fail("usage: llama_logits MODEL LORA|- TEXT OUT");
    }
    std::ifstream in(argv[3]);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        return fail("cannot load the model");
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens(text.size() + 8);
    const int n = llama_tokenize(vocab, text.c_str(), (int) text.size(), tokens.data(),
                                 (int) tokens.size(), true, false);
    if (n <= 0) {
        return fail("cannot tokenize the text");
    }
    tokens.resize(n);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n;
    cp.n_batch = n;
    cp.n_ubatch = n;
    // An f32 KV cache: with the default f16 one, K and V values that differ in their last f32
    // bits can round to different f16 values, and the two runs compared would differ by that.
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    // One thread a core: ggml's threads spin at barriers, so more threads than cores (its
    // default is 4) is far slower on a small CI machine.
    const int cores = (int) std::thread::hardware_concurrency();
    if (cores > 0) {
        cp.n_threads = cores;
        cp.n_threads_batch = cores;
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        return fail("cannot make a context");
    }
    if (strcmp(argv[2], "-") != 0) {
        llama_adapter_lora * lora = llama_adapter_lora_init(model, argv[2]);
        if (!lora) {
            return fail("cannot load the LoRA adapter");
        }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &lora, 1, &scale) != 0) {
            return fail("cannot apply the LoRA adapter");
        }
    }
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        return fail("llama_decode failed");
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    FILE * out = fopen(argv[4], "wb");
    if (!out) {
        return fail("cannot write the output");
    }
    fwrite(&n, sizeof(int), 1, out);
    fwrite(&n_vocab, sizeof(int), 1, out);
    fwrite(tokens.data(), sizeof(llama_token), n, out);
    for (int i = 0; i < n; ++i) {
        fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);
    }
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
