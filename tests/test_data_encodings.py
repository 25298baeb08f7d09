"""Tk-Instruct source formatting, written out by hand from the reference collator's rules."""

import collections

import pytest

from test_data_common import throwaway_vocab, toy_task  # noqa: F401  (fixture)
from tkx.data import encodings as enc
from tkx.data import ni

TASK = dict(toy_task(), Task="task001_toy")
INSTANCE = {
    "id": "task001_toy-3",
    "input": "What is 3+3?",
    "output": ["6", "six"],
}

DEF = "Definition: Answer the question.\n\n"
POS1 = " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n\n"
POS2 = " Positive Example 2 -\nInput: Name a color.\n Output: blue.\n\n"
POS3 = " Positive Example 3 -\nInput: third.\n Output: x.\n\n"
POS1_EXPL = " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n Explanation: Two plus two is four.\n\n"
POS2_EXPL = " Positive Example 2 -\nInput: Name a color.\n Output: blue.\n Explanation: Blue is a color!\n\n"
NEG1 = " Negative Example 1 -\nInput: What is 1+1?\n Output: 3.\n\n"
NEG1_EXPL = " Negative Example 1 -\nInput: What is 1+1?\n Output: 3.\n Explanation: Wrong sum.\n\n"
NEG2 = " Negative Example 2 -\nInput: Say hi.\n Output: bye.\n\n"  # no explanation in the file
INPUT = "Now complete the following example -\nInput: What is 3+3?\nOutput: "


@pytest.mark.parametrize(
    "name,expected",
    [
        ("def", DEF + INPUT),
        ("pos2", POS1 + POS2 + INPUT),
        ("def_pos2", DEF + POS1 + POS2 + INPUT),
        ("def_pos2_neg2", DEF + POS1 + POS2 + NEG1 + NEG2 + INPUT),
        (
            "def_pos2_neg2_expl",
            DEF + POS1_EXPL + POS2_EXPL + NEG1_EXPL + NEG2 + INPUT,
        ),
        ("def_pos2_expl", DEF + POS1_EXPL + POS2_EXPL + INPUT),
        ("name_def_pos2", "task001_toy. " + DEF + POS1 + POS2 + INPUT),
        ("name", "task001_toy. " + INPUT),
        ("neg1", NEG1 + INPUT),
        (
            "pos9",
            POS1 + POS2 + POS3 + INPUT,
        ),  # asks for more examples than exist
        ("none", INPUT),
        ("expl_pos1_def", DEF + POS1_EXPL + INPUT),  # parts in any order
    ],
)
def test_every_encoding_part(name, expected):
  assert enc.encode_source(TASK, INSTANCE, enc.parse_encoding(name)) == expected
  assert enc.encode_source(TASK, INSTANCE, name) == expected


@pytest.mark.parametrize(
    "text,closed",
    [
        ("plain", "plain."),
        ("  padded words \n", "padded words."),
        ("question?", "question?"),
        ("(parenthesis)", "(parenthesis)"),
        ('He said "hi"', 'He said "hi"'),
        (
            "He said \u201chi\u201d",
            "He said \u201chi\u201d.",
        ),  # curly quote is not in string.punctuation
        ("ends with tilde~", "ends with tilde~"),
        ("Finnish: mik\u00e4", "Finnish: mik\u00e4."),
        (
            "",
            ".",
        ),  # empty input: "Input: " ends in a space, so a "." follows it
    ],
)
def test_punctuation_rule_on_input(text, closed):
  source = enc.encode_source(TASK, dict(INSTANCE, input=text), "none")
  assert (
      source
      == f"Now complete the following example -\nInput: {closed}\nOutput: "
  )


def test_string_definition_and_definition_punctuation():
  task = dict(TASK, Definition="  Say it twice!  ")
  assert (
      enc.encode_source(task, INSTANCE, "def")
      == "Definition: Say it twice!\n\n" + INPUT
  )
  task = dict(TASK, Definition=["First one", "second."])
  assert (
      enc.encode_source(task, INSTANCE, "def")
      == "Definition: First one.\n\n" + INPUT
  )


def test_parse_encoding_names_and_errors():
  assert enc.parse_encoding("def_pos2") == enc.EncodingConfig(
      False, True, 2, 0, False
  )
  assert enc.parse_encoding("name_def_pos2_neg2_expl") == enc.EncodingConfig(
      True, True, 2, 2, True
  )
  assert enc.parse_encoding("pos2") == enc.EncodingConfig(
      False, False, 2, 0, False
  )
  assert enc.parse_encoding("tk_instruct") == "tk_instruct"
  for name in (
      "def",
      "pos2",
      "def_pos2",
      "def_pos2_neg2_expl",
      "name_def_pos2",
      "none",
  ):
    assert enc.parse_encoding(name).name == name
  for bad in ("definition", "def_pos", "pos2_pos3", "def__pos2", "", "Def"):
    with pytest.raises(ValueError) as error:
      enc.parse_encoding(bad)
    assert "pos<k>" in str(error.value) and "tk_instruct" in str(error.value)
  assert [c.name for c in enc.TK_INSTRUCT_ENCODINGS] == [
      "def",
      "pos2",
      "def_pos2",
      "def_pos2_neg2",
      "def_pos2_expl",
  ]


def test_tk_instruct_mixture_is_seeded_per_instance():
  ids = [f"task001_toy-{i}" for i in range(300)]
  first = [enc.choose_tk_instruct_encoding(42, i) for i in ids]
  assert first == [enc.choose_tk_instruct_encoding(42, i) for i in ids]
  assert first != [enc.choose_tk_instruct_encoding(43, i) for i in ids]
  counts = collections.Counter(c.name for c in first)
  assert set(counts) == {c.name for c in enc.TK_INSTRUCT_ENCODINGS}
  assert min(counts.values()) > 30  # roughly uniform over the five
  for i in ids[:20]:
    instance = dict(INSTANCE, id=i)
    assert enc.encode_source(
        TASK, instance, "tk_instruct", seed=42
    ) == enc.encode_source(
        TASK, instance, enc.choose_tk_instruct_encoding(42, i)
    )


def test_select_target_is_seeded_and_drawn_from_outputs():
  instances = [{"id": f"x-{i}", "output": ["a", "b", "c"]} for i in range(60)]
  picks = [enc.select_target(i, 1) for i in instances]
  assert picks == [enc.select_target(i, 1) for i in instances]
  assert set(picks) == {"a", "b", "c"}
  assert picks != [enc.select_target(i, 2) for i in instances]


# ---------------------------------------------------------------- token budget
# A whitespace "tokenizer" makes the budget arithmetic checkable by hand:
# DEF is 4 words, POS1 and POS2 are 10 each, INPUT is 11; EOS adds 1.


def words(text):
  return len(text.split()) + 1


def first_words(text, n):
  return " ".join(text.split()[:n])


def test_budget_drops_examples_that_do_not_fit():
  kwargs = dict(token_count=words, truncate=first_words)
  # def+pos1+input = 26 tokens; def+pos1+pos2+input = 36.
  assert enc.encode_source(
      TASK, INSTANCE, "def_pos2", max_source_length=36, **kwargs
  ) == (DEF + POS1 + POS2 + INPUT)
  assert enc.encode_source(
      TASK, INSTANCE, "def_pos2", max_source_length=35, **kwargs
  ) == (DEF + POS1 + INPUT)
  assert (
      enc.encode_source(
          TASK, INSTANCE, "def_pos2", max_source_length=26, **kwargs
      )
      == DEF + POS1 + INPUT
  )
  assert (
      enc.encode_source(
          TASK, INSTANCE, "def_pos2", max_source_length=25, **kwargs
      )
      == DEF + INPUT
  )
  # Once a positive example fails, later ones are not tried (break, not continue),
  # and negatives are then checked on their own.
  assert enc.encode_source(
      TASK, INSTANCE, "def_pos2_neg1", max_source_length=25, **kwargs
  ) == (
      DEF + INPUT
  )  # NEG1 is 10 words too
  assert enc.encode_source(
      TASK, INSTANCE, "def_pos1_neg1", max_source_length=36, **kwargs
  ) == (DEF + POS1 + NEG1 + INPUT)


def test_budget_checks_join_with_a_space_but_the_source_joins_with_nothing():
  chars = lambda text: len(text) + 1  # noqa: E731
  cut = lambda text, n: text[:n]  # noqa: E731
  exact = len(DEF + POS1 + POS2 + POS3 + INPUT) + 1
  # The final text would fit exactly, but the check for POS3 sees "POS1 POS2" (one more char).
  assert (
      enc.encode_source(
          TASK,
          INSTANCE,
          "def_pos3",
          max_source_length=exact,
          token_count=chars,
          truncate=cut,
      )
      == DEF + POS1 + POS2 + INPUT
  )
  assert (
      enc.encode_source(
          TASK,
          INSTANCE,
          "def_pos3",
          max_source_length=exact + 1,
          token_count=chars,
          truncate=cut,
      )
      == DEF + POS1 + POS2 + POS3 + INPUT
  )
  # Negatives: the check joins the kept positives with " " too ("POS1 POS2" + "NEG1" + NEG2).
  exact = len(DEF + POS1 + POS2 + NEG1 + NEG2 + INPUT) + 1
  assert (
      enc.encode_source(
          TASK,
          INSTANCE,
          "def_pos2_neg2",
          max_source_length=exact,
          token_count=chars,
          truncate=cut,
      )
      == DEF + POS1 + POS2 + NEG1 + INPUT
  )
  assert (
      enc.encode_source(
          TASK,
          INSTANCE,
          "def_pos2_neg2",
          max_source_length=exact + 1,
          token_count=chars,
          truncate=cut,
      )
      == DEF + POS1 + POS2 + NEG1 + NEG2 + INPUT
  )
  # ... and the kept negatives among themselves: "NEG1 NEG2" when checking a third.
  task = dict(
      TASK,
      **{
          "Negative Examples": (
              TASK["Negative Examples"] + [{"input": "z", "output": "y"}]
          )
      },
  )
  neg3 = " Negative Example 3 -\nInput: z.\n Output: y.\n\n"
  exact = len(DEF + NEG1 + NEG2 + neg3 + INPUT) + 1
  assert (
      enc.encode_source(
          task,
          INSTANCE,
          "def_neg3",
          max_source_length=exact,
          token_count=chars,
          truncate=cut,
      )
      == DEF + NEG1 + NEG2 + INPUT
  )
  assert (
      enc.encode_source(
          task,
          INSTANCE,
          "def_neg3",
          max_source_length=exact + 1,
          token_count=chars,
          truncate=cut,
      )
      == DEF + NEG1 + NEG2 + neg3 + INPUT
  )


def test_truncation_and_uncounted_task_name():
  kwargs = dict(token_count=words, truncate=first_words)
  # def+input is 16 tokens; a budget of 8 keeps the first 8 words.
  assert enc.encode_source(
      TASK, INSTANCE, "def", max_source_length=8, **kwargs
  ) == ("Definition: Answer the question. Now complete the following")
  # The task name is not counted when adding examples: POS1 is kept (26 <= 26), then the
  # final source (27 tokens with the name) is over budget and cut to its 26 words,
  # i.e. it goes through the truncation path (which here loses the line breaks).
  source = enc.encode_source(
      TASK, INSTANCE, "name_def_pos1", max_source_length=26, **kwargs
  )
  assert source == (
      "task001_toy. Definition: Answer the question. Positive Example 1 - Input: "
      "What is 2+2? Output: 4. Now complete the following example - Input: What is 3+3? "
      "Output:"
  )
  with pytest.raises(ValueError, match="both"):
    enc.encode_source(TASK, INSTANCE, "def", token_count=words)


# ---------------------------------------------------------------- with a real vocabulary


def test_vocabulary_budget_counts_eos_and_truncates_by_decoding(throwaway_vocab):  # noqa: F811
  token_count, truncate = enc.vocabulary_token_fns(throwaway_vocab)
  text = "Definition: Answer the question.\n\nNow complete"
  assert token_count(text) == len(throwaway_vocab.encode(text)) + 1
  full = enc.encode_source(TASK, INSTANCE, "def_pos2_neg2_expl")
  n_full = token_count(full)
  assert (
      enc.encode_source(
          TASK,
          INSTANCE,
          "def_pos2_neg2_expl",
          max_source_length=n_full,
          token_count=token_count,
          truncate=truncate,
      )
      == full
  )
  short = enc.encode_source(
      TASK,
      INSTANCE,
      "def",
      max_source_length=6,
      token_count=token_count,
      truncate=truncate,
  )
  ids = throwaway_vocab.encode(DEF + INPUT)[:6]
  assert short == enc.clean_up_tokenization(throwaway_vocab.decode(ids))
  assert short.startswith("Defini") and len(throwaway_vocab.encode(short)) <= 7


def test_hf_decode_clean_up_rule():
  assert enc.clean_up_tokenization(
      "Is it ? Yes , it is . I 'm sure they 're n't"
  ) == ("Is it? Yes, it is. I'm sure they'ren't")


def test_shared_sample_sources_fit_the_budget(shared_ni_dir, throwaway_vocab):  # noqa: F811
  token_count, truncate = enc.vocabulary_token_fns(throwaway_vocab)
  task = ni.load_task(shared_ni_dir, "task033_winogrande_answer_generation")
  for instance in ni.select_instances(task, "test", 5, seed=0):
    source = enc.encode_source(
        task,
        instance,
        "def_pos2_neg2_expl",
        max_source_length=128,
        token_count=token_count,
        truncate=truncate,
    )
    unbudgeted = enc.encode_source(task, instance, "def_pos2_neg2_expl")
    assert (
        token_count(source) <= 128 + 2
    )  # decoding then re-encoding may merge differently
    assert len(source) < len(unbudgeted)
