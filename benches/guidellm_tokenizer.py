"""Trains a small byte-level BPE tokenizer and saves it as a Hugging Face tokenizer directory,
so GuideLLM (which needs one) can run here offline: guidellm_tokenizer.py DIR
(needs the `tokenizers` and `transformers` packages, which GuideLLM installs)."""
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

words = ("the of and to in is that for it as with was on be at by this have from or one had not but "
         "what all were when we there can an your which their said if do will each about how up out "
         "them then many some gateway token bucket quota stream").split()
random.seed(1)
corpus = [" ".join(random.choice(words) for _ in range(50)) for _ in range(2000)]
tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["[UNK]", "<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tokenizer.train_from_iterator(corpus, trainer)
PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="<s>",
                        eos_token="</s>").save_pretrained(sys.argv[1])
