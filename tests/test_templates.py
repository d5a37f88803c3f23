"""Each template against the exact token ids of the release's training format.

Expected ids are written out here from the literal strings of the release's templates (its
LLaMA-Factory `vanilla`, `llama2` and `alpaca`), each text piece encoded on its own, not
from the template code.
"""

import copy

import pytest

from ssr.errors import ConfigError
from ssr.models import get_template, load_tokenizer

DEFINITION = "Reverse the order of the words in the input."
INPUT = "apple river stone"
OUTPUT = "stone river apple"

SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question "
    "does not make any sense, or is not factually coherent, explain why instead of answering something not "
    "correct. If you don't know the answer to a question, please don't share false information."
)


@pytest.fixture
def tok(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.bos_token_id is not None and tokenizer(INPUT)["input_ids"][:1] != [tokenizer.bos_token_id]
    return tokenizer


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_vanilla_is_bos_definition_blank_line_input_then_the_response(tok):
    t = get_template("vanilla", tok)
    assert t.prompt_ids(DEFINITION, INPUT) == [tok.bos_token_id] + enc(tok, f"{DEFINITION}\n\n{INPUT}")
    assert t.target_ids(OUTPUT) == enc(tok, OUTPUT) + [tok.eos_token_id]


def test_llama2_has_the_default_system_prompt_inside_the_first_inst(tok):
    t = get_template("llama2", tok)
    text = f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{DEFINITION}\n\n{INPUT} [/INST] "
    assert t.prompt_ids(DEFINITION, INPUT) == [tok.bos_token_id] + enc(tok, text)
    assert t.target_ids(OUTPUT) == enc(tok, OUTPUT) + [tok.eos_token_id]


def test_alpaca_is_the_no_input_header_with_the_input_in_the_instruction(tok):
    t = get_template("alpaca", tok)
    header = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    expected = ([tok.bos_token_id] + enc(tok, header) + enc(tok, "\n\n")
                + enc(tok, f"### Instruction:\n{DEFINITION}\n\n{INPUT}\n\n### Response:\n"))
    assert t.prompt_ids(DEFINITION, INPUT) == expected
    assert t.target_ids(OUTPUT) == enc(tok, OUTPUT) + [tok.eos_token_id]


def test_raw_keeps_its_labels_and_the_space_before_the_answer(tok):
    t = get_template("raw", tok)
    assert t.prompt_ids(DEFINITION, INPUT) == tok(f"{DEFINITION}\n\nInput: {INPUT}\nOutput:")["input_ids"]
    assert t.target_ids(OUTPUT) == enc(tok, f" {OUTPUT}") + [tok.eos_token_id]


def test_chat_uses_the_tokenizer_template_with_one_bos(tok):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                              "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    t = get_template("chat", chat_tok)
    ids = t.prompt_ids(DEFINITION, INPUT)
    assert ids == enc(chat_tok, f"<s>user\n{DEFINITION}\n\n{INPUT}</s>\n<s>assistant\n")
    assert ids[:2] != [chat_tok.bos_token_id] * 2
    assert get_template("auto", chat_tok).name == "chat"


def test_auto_without_a_chat_template_is_vanilla(tok):
    assert get_template("auto", tok).name == "vanilla"


def test_no_bos_where_the_tokenizer_has_none(tok):
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    assert get_template("vanilla", no_bos).prompt_ids(DEFINITION, INPUT) == enc(no_bos, f"{DEFINITION}\n\n{INPUT}")


def test_unknown_template_is_a_config_error(tok):
    with pytest.raises(ConfigError):
        get_template("vicuna", tok)
