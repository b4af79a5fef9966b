"""The script ``netdiff app`` hands to ``streamlit run``: the navigation over the four pages.

Streamlit runs it as ``__main__``; importing it (as a walk over netdiff's modules does) runs
nothing and needs no streamlit."""
from netdiff.app.ui import st
from netdiff.app.views import captures, evaluate, generate, telemetry


def main() -> None:
    st.set_page_config(page_title="netdiff", layout="wide")
    pages = [st.Page(m.render, title=m.TITLE, url_path=m.TITLE.lower(), default=m is captures)
             for m in (captures, generate, evaluate, telemetry)]
    st.navigation(pages).run()


if __name__ == "__main__":
    main()
