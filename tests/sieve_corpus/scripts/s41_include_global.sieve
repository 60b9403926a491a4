require ["include", "variables", "fileinto"];
global "folder";
set "folder" "Default";
include :global :once "setfolder";
include :global :once "setfolder";
fileinto "${folder}";
