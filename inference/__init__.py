"""Using a trained model: terminal chat (`llava chat`) and the Gradio visual-chat web demo (`llava serve`)."""
