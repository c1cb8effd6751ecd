"""Ollama prompt templates for chat formats whose Jinja template Ollama may not recognise.

Ollama turns a GGUF's ``tokenizer.chat_template`` (Jinja) into one of its own Go templates by
fuzzy matching: the closest of its known templates wins if it is fewer than 100 edits away
(``template.Named`` in ollama/ollama ``template/template.go``, called from
``detectChatTemplate`` in ``server/model.go``). Instruct models often ship longer templates
(tool calls, default system prompts), which then match nothing and Ollama falls back to the raw
prompt. For the formats our recipes use we therefore send the Go template ourselves; for other
families we rely on Ollama's detection.
"""

from __future__ import annotations

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)

_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("chatml", "<|im_start|>", CHATML),
    ("llama3", "<|start_header_id|>", LLAMA3),
)


def chat_format(chat_template: str | None) -> str | None:
    """The chat format a Jinja template writes, when it is one we have a Go template for."""
    for name, marker, _ in _FAMILIES:
        if chat_template and marker in chat_template:
            return name
    return None


def ollama_template(chat_template: str | None) -> str | None:
    """The Go template to send with /api/create, or None to leave it to Ollama's detection."""
    for name, _, go in _FAMILIES:
        if chat_format(chat_template) == name:
            return go
    return None


_PROBE = "\x00lorainbox-probe\x00"


def default_system_prompt(chat_template: str | None) -> str | None:
    """The system prompt a Jinja chat template writes when a chat has none (Qwen2.5's "You are
    Qwen, created by Alibaba Cloud…"), or None when it writes none.

    Training rendered every example through this template, so the model learned with that
    prompt; Ollama's Go template would leave it out. Found by rendering one chat with a system
    message and without: what stands where the system message stood is the default.
    """
    if not chat_template:
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    user = {"role": "user", "content": "hi"}

    def render(messages: list[dict[str, str]]) -> str:
        rendered, _ = render_jinja_template(
            [messages], chat_template=chat_template, add_generation_prompt=False
        )
        return rendered[0]

    try:
        without = render([user])
        around = render([{"role": "system", "content": _PROBE}, user])
    except Exception:  # a template that needs tools, dates or a special layout: no guess
        return None
    head, found, tail = around.partition(_PROBE)
    fits = len(without) >= len(head) + len(tail)
    if not (found and fits and without.startswith(head) and without.endswith(tail)):
        return None
    return without[len(head) : len(without) - len(tail)].strip() or None
