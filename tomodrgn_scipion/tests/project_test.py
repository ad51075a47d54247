"""Base of the tests that run protocols in a headless Scipion project."""
import os

from pyworkflow.tests import BaseTest, setupTestProject


class ProjectTest(BaseTest):
    """A pyworkflow test case with its own project; the working directory is restored afterwards
    (``setupTestProject`` moves into the project folder, and later tests must not run there)."""

    @classmethod
    def setUpClass(cls):
        cls._cwd = os.getcwd()
        setupTestProject(cls)

    @classmethod
    def tearDownClass(cls):
        os.chdir(cls._cwd)
