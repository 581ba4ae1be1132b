"""Instruction data, paper §3 and Appendix A: COCO annotations -> teacher contexts (`coco`), the Table 8/9
instruction lists and the naive stage-1 expansion (`instructions`), prompts and parsing (`prompting`), teacher LLMs
(`teachers`), resumable concurrent generation (`generate`, `store`, `concurrency`), the Appendix A caption filter
(`caption_filter`) and the stage-2 mix (`mix`)."""
