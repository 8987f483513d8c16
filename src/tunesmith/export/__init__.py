"""Where a run's model goes after evaluation, each answering as the run was scored:

    tunesmith export runs/demo merged/                            # merged safetensors: vLLM, TGI
    tunesmith export runs/demo gguf/ --format gguf --quant q4_k_m  # llama.cpp / Ollama + Modelfile
    tunesmith export runs/demo gguf/ --format gguf --check         # ... answers checked in llama.cpp
    tunesmith push runs/demo my-org/tickets                        # the Hub, private (HF_TOKEN)

    merged.py   the merged model directory (system prompt in its chat template, greedy settings)
    gguf.py     llama.cpp's converter and quantizer, and the GGUF's check in llama.cpp
    ollama.py   the Modelfile beside a GGUF
    check.py    the run's test prompts answered by an export, against `tunesmith eval`'s answers
    hub.py      `tunesmith push`: huggingface_hub, the card through the hub library's parser
"""
