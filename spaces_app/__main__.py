"""`python -m opens2s.spaces_app [--model ...]`: serve the OpenS2S Gradio app."""

from opens2s.spaces_app import main


__all__ = []

if __name__ == "__main__":
    raise SystemExit(main())
