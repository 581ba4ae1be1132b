"""Using a trained model: the generation layer under chat, answering, the web demo and evaluation.

- `settings`: `GenerationSettings` and its command-line group; `loading`: `load_model_and_processor` (Auto
  classes, remote code, chat-template check); `messages`: typed-content turns, the rendered prompt, the
  template's stop marker.
- `batch`: left-padded batched generation (`BatchAnswerer`, `answer_in_batches`) and resumable answering of a
  question file (`answer_question_file`, `llava answer`); `streaming`: one answer streamed as it is decoded.
- `chat`: a multi-turn `ChatSession`; `chat_cli`: `llava chat`; `web_demo`: `llava serve` (Gradio);
  `answer_cli`: `llava answer`.
"""
